"""google.api.http rules -> routes, read from the generated descriptors at start-up.

Every method of every service in the given proto modules that carries a `google.api.http` option
(and each of its `additional_bindings`) becomes a `Route`. Nothing here is written per RPC: adding an
RPC with a rule adds its route, its OpenAPI entry and its entry in the page's route table.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message

VERBS = ("get", "put", "post", "delete", "patch")

# Variable segments: `{field}` (one segment), `{field=a/*/b}` or `{field=**}` (a pattern).
_VARIABLE = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_.]*)(?:=([^}]*))?\}")


class TemplateError(ValueError):
    """A path template the gateway cannot serve; raised at start-up, naming the method."""


@dataclasses.dataclass(frozen=True)
class Template:
    """A parsed path template: a regex with one group per variable, and the variables' field paths."""

    text: str
    regex: re.Pattern[str]
    variables: tuple[str, ...]
    verb: str
    # Literal characters: with several matches, the most literal template wins.
    specificity: int

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        return {field: m.group(f"v{i}") for i, field in enumerate(self.variables)}


def parse_template(text: str) -> Template:
    if not text.startswith("/"):
        raise TemplateError(f"path template {text!r} must start with '/'")
    verb = ""
    last = text.rsplit("/", 1)[-1]
    if ":" in last.split("}")[-1]:
        text_no_verb, verb = text.rsplit(":", 1)
    else:
        text_no_verb = text
    pattern: list[str] = []
    variables: list[str] = []
    pos, literal = 0, 0
    for m in _VARIABLE.finditer(text_no_verb):
        chunk = text_no_verb[pos : m.start()]
        pattern.append(re.escape(chunk))
        literal += len(chunk)
        sub = m.group(2) or "*"
        parts = []
        for seg in sub.split("/"):
            if seg == "*":
                parts.append("[^/]+")
            elif seg == "**":
                parts.append(".+")
            else:
                parts.append(re.escape(seg))
        # A variable never swallows the custom verb.
        group = "/".join(parts).replace("[^/]+", "[^/:]+" if verb else "[^/]+")
        pattern.append(f"(?P<v{len(variables)}>{group})")
        variables.append(m.group(1))
        pos = m.end()
    tail = text_no_verb[pos:]
    if "{" in tail or "}" in tail:
        raise TemplateError(f"malformed path template {text!r}")
    pattern.append(re.escape(tail))
    literal += len(tail)
    if verb:
        pattern.append(re.escape(":" + verb))
        literal += len(verb) + 1
    return Template(text, re.compile("".join(pattern)), tuple(variables), verb, literal)


@dataclasses.dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    service: str  # full name: agentmesh.agents.v1.AgentService
    method: descriptor.MethodDescriptor
    http_method: str  # GET, POST, ...
    template: Template
    body: str  # "", "*" or a top-level field name
    response_body: str  # "" or a top-level field name of the response
    request_class: type[Message]
    response_class: type[Message]

    @property
    def rpc_path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def name(self) -> str:
        """Short name for clients: AgentService.CreateAgent."""
        return f"{self.method.containing_service.name}.{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return self.method.server_streaming

    @property
    def package_key(self) -> str:
        """The peer this route's service lives on: `agents` for agentmesh.agents.v1."""
        parts = self.service.split(".")
        return parts[1] if len(parts) > 2 else parts[0]

    def query_fields(self) -> list[descriptor.FieldDescriptor]:
        """Top-level request fields bound neither by the path nor by the body."""
        if self.body == "*":
            return []
        bound = {v.split(".")[0] for v in self.template.variables} | {self.body}
        return [f for f in self.method.input_type.fields if f.name not in bound]


def _bindings(rule: http_pb2.HttpRule) -> Iterable[http_pb2.HttpRule]:
    yield rule
    yield from rule.additional_bindings


def _verb_and_path(rule: http_pb2.HttpRule) -> tuple[str, str] | None:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return None
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), getattr(rule, kind)


def routes_from_files(files: Iterable[descriptor.FileDescriptor]) -> list[Route]:
    routes: list[Route] = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                rule = options.Extensions[annotations_pb2.http]
                request_class = message_factory.GetMessageClass(method.input_type)
                response_class = message_factory.GetMessageClass(method.output_type)
                for binding in _bindings(rule):
                    verb_path = _verb_and_path(binding)
                    if verb_path is None:
                        continue
                    try:
                        template = parse_template(verb_path[1])
                    except TemplateError as exc:
                        raise TemplateError(f"{method.full_name}: {exc}") from None
                    _check_fields(method, template, binding.body)
                    routes.append(
                        Route(
                            service=service.full_name,
                            method=method,
                            http_method=verb_path[0],
                            template=template,
                            body=binding.body,
                            response_body=binding.response_body,
                            request_class=request_class,
                            response_class=response_class,
                        )
                    )
    return routes


def _check_fields(method: descriptor.MethodDescriptor, template: Template, body: str) -> None:
    for path in template.variables:
        resolve_field(method.input_type, path, owner=method.full_name)
    if body and body != "*":
        resolve_field(method.input_type, body, owner=method.full_name)


def resolve_field(
    message: descriptor.Descriptor, path: str, *, owner: str = ""
) -> list[descriptor.FieldDescriptor]:
    fields: list[descriptor.FieldDescriptor] = []
    current: descriptor.Descriptor | None = message
    for name in path.split("."):
        if current is None or name not in current.fields_by_name:
            raise TemplateError(f"{owner}: no field {path!r} in {message.full_name}")
        field = current.fields_by_name[name]
        fields.append(field)
        current = field.message_type
    return fields


def proto_modules(package: str = "agentmesh") -> list[ModuleType]:
    """Every generated *_pb2 module under `package` (agentmesh.*.v1.*_pb2)."""
    root = importlib.import_module(package)
    found = []
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if info.name.endswith("_pb2") and not info.ispkg:
            found.append(importlib.import_module(info.name))
    return found


def discover(modules: Sequence[ModuleType] | None = None) -> list[Route]:
    """Routes of every service in `modules` (default: every generated agentmesh module)."""
    modules = proto_modules() if modules is None else modules
    return routes_from_files(m.DESCRIPTOR for m in modules)


def _prefix(path: str) -> str:
    """The first two segments (`/v1/agents`), the key the router files routes under."""
    return "/".join(path.split("/", 3)[:3])


@dataclasses.dataclass
class Router:
    """Matches a request to a route: 404 when no template matches, 405 when only the verb differs.

    Routes are filed by their first two segments when those are literal (`/v1/identity`), so a
    request tries only the templates that can match it (and those with a variable there): trying
    every template in turn cost about 70 µs a request with ~40 routes (bench/gateway.py, profiled),
    a third of the gateway's own cost over a bare HTTP-to-gRPC hop."""

    routes: list[Route]

    def __post_init__(self) -> None:
        self.routes = sorted(self.routes, key=lambda r: -r.template.specificity)
        literal = {id(r): _prefix(r.template.text) for r in self.routes}
        for route in self.routes:
            if "{" in literal[id(route)] or literal[id(route)].count("/") < 2:
                literal[id(route)] = ""  # may match under any prefix
        # Each list keeps the specificity order of self.routes.
        self._anywhere = [r for r in self.routes if not literal[id(r)]]
        self._by_prefix = {
            key: [r for r in self.routes if literal[id(r)] in (key, "")]
            for key in {k for k in literal.values() if k}
        }

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        allowed: list[str] = []
        for route in self._by_prefix.get(_prefix(path), self._anywhere):
            params = route.template.match(path)
            if params is None:
                continue
            if route.http_method == method:
                return route, params, []
            allowed.append(route.http_method)
        return None, {}, sorted(set(allowed))


def describe(route: Route) -> dict[str, Any]:
    """The JSON form of a route, served at /v1/_routes for the generic JS client."""
    return {
        "name": route.name,
        "rpc": route.rpc_path,
        "method": route.http_method,
        "path": route.template.text,
        "variables": list(route.template.variables),
        "body": route.body,
        "responseBody": route.response_body,
        "serverStreaming": route.server_streaming,
    }
