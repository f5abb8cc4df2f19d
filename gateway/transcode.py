"""HTTP request -> request message, response message -> JSON, with the proto3 JSON mapping.

Path variables, the body (`*` or one field) and query parameters (the remaining fields, nested with
dots, repeated by repetition) are merged into one JSON object and parsed with json_format.ParseDict,
so an unknown field or a malformed value fails the same way wherever it came from. Then the
field_behavior rules apply: OUTPUT_ONLY fields are dropped and a missing REQUIRED field is a 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

from gateway import field_behavior
from gateway.errors import BadInput
from gateway.routes import Route, TemplateError, resolve_field

_FD = descriptor.FieldDescriptor
_FLOATS = (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE)
_UNKNOWN_FIELD = re.compile(r'no field named "([^"]+)" at "([^"]*)"')
_FAILED_FIELD = re.compile(r"Failed to parse (\S+) field")


def _scalar(field: descriptor.FieldDescriptor, raw: str) -> Any:
    """A path or query string as the JSON value ParseDict expects for `field`."""
    if field.type == _FD.TYPE_BOOL:
        if raw in ("true", "false"):
            return raw == "true"
        raise BadInput(field.name, f"expected true or false, got {raw!r}")
    if field.type in _FLOATS:
        try:
            return float(raw)
        except ValueError:
            raise BadInput(field.name, f"expected a number, got {raw!r}") from None
    # Integers (as strings), enums (by name or number), strings, bytes and the string-valued
    # well-known types (Timestamp, Duration, FieldMask) all parse from their string form.
    return raw


def _set_path(target: dict[str, Any], fields: list[descriptor.FieldDescriptor], value: Any) -> None:
    for field in fields[:-1]:
        nested = target.setdefault(field.name, {})
        if not isinstance(nested, dict):
            raise BadInput(field.name, "expected an object")
        target = nested
    leaf = fields[-1]
    if leaf.is_repeated:
        target.setdefault(leaf.name, []).append(value)
    else:
        target[leaf.name] = value


def _field_path(message: descriptor.Descriptor, name: str) -> list[descriptor.FieldDescriptor]:
    """Resolves a dotted path whose segments may be proto names or JSON (lowerCamel) names."""
    fields: list[descriptor.FieldDescriptor] = []
    current: descriptor.Descriptor | None = message
    for part in name.split("."):
        if current is None:
            raise BadInput(name, "not a field of the request")
        field = current.fields_by_name.get(part) or next(
            (f for f in current.fields if f.json_name == part), None
        )
        if field is None:
            raise BadInput(name, "not a field of the request")
        fields.append(field)
        current = field.message_type
    return fields


def _is_scalar_like(field: descriptor.FieldDescriptor) -> bool:
    if field.message_type is None:
        return True
    return field.message_type.full_name.startswith("google.protobuf.")


def parse_body(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput("body", f"malformed JSON: {exc}") from None


def build_request(
    route: Route,
    path_params: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
) -> Message:
    """The request message for `route`; BadInput (-> 400 naming the field) for any bad part."""
    data: dict[str, Any] = {}
    descriptor_ = route.method.input_type
    if route.body == "*":
        parsed = parse_body(body)
        if not isinstance(parsed, dict):
            raise BadInput("body", "expected a JSON object")
        data = parsed
    elif route.body:
        parsed = parse_body(body)
        data[route.body] = parsed
    elif body.strip():
        raise BadInput("body", "this method takes no request body")
    if route.body != "*" and query:
        query_names = {f.name for f in route.query_fields()} | {f.json_name for f in route.query_fields()}
        for name, raw in query:
            if name.split(".")[0] not in query_names:
                raise BadInput(name, "not a query parameter of this method")
            fields = _field_path(descriptor_, name)
            leaf = fields[-1]
            if not _is_scalar_like(leaf):
                raise BadInput(name, "a message field cannot be set from a query parameter")
            _set_path(data, fields, _scalar(leaf, raw))
    for path, raw in path_params.items():
        try:
            fields = resolve_field(descriptor_, path)
        except TemplateError:
            raise BadInput(path, "not a field of the request") from None
        if fields[-1].is_repeated:
            raise BadInput(path, "a path variable cannot bind a repeated field")
        _set_path(data, fields, _scalar(fields[-1], raw))
    message = route.request_class()
    if not data:  # a GET without parameters: nothing to parse or clear, and ParseDict is not free
        field_behavior.check_required(message, descriptor_)
        return message
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise BadInput(_field_of(str(exc), route), _first_line(str(exc))) from None
    except (TypeError, ValueError, AttributeError) as exc:  # odd shapes json_format does not wrap
        raise BadInput("body", f"cannot parse the request: {exc}") from None
    field_behavior.clear_output_only(message, keep=route.template.variables)
    field_behavior.check_required(message, descriptor_)
    return message


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid request"


def _field_of(message: str, route: Route) -> str:
    """The field a json_format error names, as a dotted path without the request type."""
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown is not None:
        return ".".join([*unknown.group(2).split(".")[1:], unknown.group(1)])
    nested = _FAILED_FIELD.findall(message)
    return ".".join(nested) if nested else "body"


def to_json(message: Message, response_body: str = "") -> Any:
    """The proto3 JSON form (lowerCamelCase names, every field present) of a response."""
    if response_body:
        message = getattr(message, response_body)
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
