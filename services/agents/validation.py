"""Format rules (INVALID_ARGUMENT) and tier limits (FAILED_PRECONDITION) of agent content.

Both return every violation at once, so ValidateAgentConfig and the write RPCs report the same list.
Config dicts are in the proto-JSON form described in models.py.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import jsonschema

from services.agents.models import DEFAULT_TOOL_TIMEOUT_MS, Tool, ToolExecution
from services.platform.errors import FieldViolation, Violation
from services.platform.settings import ToolSettings
from services.platform.tiers import TierLimits

PROVIDERS = ("echo", "openai")
MAX_DISPLAY_NAME = 100
MAX_DESCRIPTION = 1000
MAX_SYSTEM_PROMPT_BYTES = 32 * 1024
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1024
MAX_TOOL_DESCRIPTION = 1024
MAX_TOOL_URL = 2048
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_MODEL = re.compile(r"([a-z0-9_-]+):([A-Za-z0-9._:/-]{1,128})")
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_FALLBACK_MODELS = 3
# response_format.type in the stored (proto-JSON) form; absent is UNSPECIFIED, read as text.
FORMAT_TEXT = "RESPONSE_FORMAT_TYPE_TEXT"
FORMAT_JSON_SCHEMA = "RESPONSE_FORMAT_TYPE_JSON_SCHEMA"
_FORMAT_TYPES = ("RESPONSE_FORMAT_TYPE_UNSPECIFIED", FORMAT_TEXT, FORMAT_JSON_SCHEMA)

# Limit names reported in ConfigViolation.limit and PreconditionFailure.Violation.type.
LIMIT_MAX_AGENTS = "max_agents"
LIMIT_MODELS = "allowed_models"
LIMIT_TOOLS = "max_tools"
LIMIT_CONTEXT = "max_context_tokens"
LIMIT_TEMPERATURE = "temperature_range"
LIMIT_TOOL_TIMEOUT = "max_tool_timeout_ms"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_names(display_name: str, description: str, *, prefix: str = "") -> list[FieldViolation]:
    out = []
    if not display_name.strip():
        out.append(FieldViolation(_join(prefix, "display_name"), "is required"))
    elif len(display_name) > MAX_DISPLAY_NAME:
        out.append(
            FieldViolation(_join(prefix, "display_name"), f"must be at most {MAX_DISPLAY_NAME} characters")
        )
    if len(description) > MAX_DESCRIPTION:
        out.append(
            FieldViolation(_join(prefix, "description"), f"must be at most {MAX_DESCRIPTION} characters")
        )
    return out


def check_config(
    config: dict[str, Any], *, tool_hosts: ToolSettings, prefix: str = "config"
) -> list[FieldViolation]:
    """The format rules of a config (tier limits are `check_tier`); `tool_hosts` says where an http
    tool may use plain http."""
    out: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        out.append(FieldViolation(_join(prefix, field), description))

    model = config.get("model", "")
    if not model:
        bad("model", 'is required, as "provider:model"')
    else:
        problem = model_problem(model)
        if problem:
            bad("model", problem)
    fallbacks = config.get("fallback_models", [])
    if len(fallbacks) > MAX_FALLBACK_MODELS:
        bad("fallback_models", f"must have at most {MAX_FALLBACK_MODELS} entries")
    tried = {model}
    for i, fallback in enumerate(fallbacks):
        problem = model_problem(fallback)
        if problem:
            bad(f"fallback_models[{i}]", problem)
        elif fallback in tried:
            # A model already tried would fail the same way again: a repeat only adds latency.
            bad(f"fallback_models[{i}]", f"{fallback!r} is already tried before it (model or a fallback)")
        tried.add(fallback)
    for field, description in response_format_problems(config.get("response_format")):
        bad(_join("response_format", field), description)
    if len(config.get("system_prompt", "").encode()) > MAX_SYSTEM_PROMPT_BYTES:
        bad("system_prompt", f"must be at most {MAX_SYSTEM_PROMPT_BYTES} bytes")
    if "temperature" in config:
        temperature = config["temperature"]
        if not isinstance(temperature, int | float) or not 0.0 <= temperature <= 2.0:
            bad("temperature", "must be between 0.0 and 2.0")
    if config.get("max_output_tokens", 0) < 0:
        bad("max_output_tokens", "must not be negative")
    seen: set[str] = set()
    for i, tool in enumerate(config.get("tools", [])):
        name = tool.get("name", "")
        if not _TOOL_NAME.fullmatch(name):
            bad(f"tools[{i}].name", "must match [a-zA-Z0-9_-]{1,64}")
        elif name in seen:
            bad(f"tools[{i}].name", f"duplicate tool name {name!r}")
        seen.add(name)
        if len(tool.get("description", "")) > MAX_TOOL_DESCRIPTION:
            bad(f"tools[{i}].description", f"must be at most {MAX_TOOL_DESCRIPTION} characters")
        problem = schema_problem(tool.get("parameters"))
        if problem:
            bad(f"tools[{i}].parameters", problem)
        for field, description in _execution_problems(tool, tool_hosts):
            bad(f"tools[{i}].{field}", description)
    policy = config.get("context_policy", {})
    if policy.get("max_context_tokens", 0) < 0:
        bad("context_policy.max_context_tokens", "must not be negative")
    metadata = config.get("metadata", {})
    if len(metadata) > MAX_METADATA_ENTRIES:
        bad("metadata", f"must have at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY:
            bad("metadata", f"keys must be 1 to {MAX_METADATA_KEY} characters")
            break
        if len(value) > MAX_METADATA_VALUE:
            bad(f"metadata[{key}]", f"must be at most {MAX_METADATA_VALUE} characters")
    return out


def model_problem(model: str) -> str:
    """Why `model` is not a "provider:model" of a known provider ("" when it is)."""
    match = _MODEL.fullmatch(model)
    if match is None:
        return 'must be "provider:model", for example "echo:default"'
    if match.group(1) not in PROVIDERS:
        return f"unknown provider {match.group(1)!r}; known: {', '.join(PROVIDERS)}"
    return ""


def response_format_problems(data: Any) -> list[tuple[str, str]]:
    """(field under response_format, description) of what is wrong with a stored response_format.
    A broken schema's field carries the JSON pointer into it (schema/properties/x/type), so the
    author of a long schema finds the keyword."""
    if not data:
        return []
    kind = data.get("type", "RESPONSE_FORMAT_TYPE_UNSPECIFIED")
    if kind not in _FORMAT_TYPES:
        return [("type", f"unknown response format type {kind!r}")]
    schema, name = data.get("schema"), data.get("name", "")
    if kind != FORMAT_JSON_SCHEMA:
        out = [("schema", "only a JSON_SCHEMA response format has a schema")] if schema else []
        return out + ([("name", "only a JSON_SCHEMA response format has a name")] if name else [])
    out = []
    if name and not _SCHEMA_NAME.fullmatch(name):
        out.append(("name", "must match [a-zA-Z0-9_-]{1,64}"))
    if not schema:
        out.append(("schema", "is required for a JSON_SCHEMA response format"))
        return out
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "".join(f"/{p}" for p in exc.absolute_path)
        out.append((f"schema{path}", f"is not a valid JSON Schema (Draft 2020-12): {exc.message}"))
    return out


def _execution_problems(raw: dict[str, Any], hosts: ToolSettings) -> list[tuple[str, str]]:
    """(field, description) of what is wrong with a tool's execution, url and timeout_ms."""
    try:
        tool = Tool.from_config(raw)
    except ValueError as exc:
        return [("execution", str(exc))]
    out = []
    if tool.timeout_ms < 0:
        out.append(("timeout_ms", f"must not be negative (0 means {DEFAULT_TOOL_TIMEOUT_MS:,})"))
    if tool.execution is ToolExecution.CLIENT:
        if tool.url:
            out.append(("url", "client tools have no url; an http tool (execution TOOL_EXECUTION_HTTP) has"))
    elif not tool.url:
        out.append(("url", "is required for an http tool: where agentmesh POSTs the call"))
    else:
        problem = url_problem(tool.url, hosts)
        if problem:
            out.append(("url", problem))
    return out


def url_problem(url: str, hosts: ToolSettings) -> str:
    """Why an http tool may not be called at `url` ("" when it may): https anywhere (the address is
    checked on each call), plain http only to a host in AGENTMESH_TOOL_ALLOWED_HOSTS."""
    if len(url) > MAX_TOOL_URL:
        return f"must be at most {MAX_TOOL_URL} characters"
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return "has a malformed port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute URL, for example https://tools.example.com/search"
    if parts.scheme == "https" or hosts.allows(parts.hostname, port or 80):
        return ""
    return (
        f"must be https; plain http only to a host in AGENTMESH_TOOL_ALLOWED_HOSTS ({parts.hostname} is not)"
    )


def schema_problem(parameters: Any) -> str:
    """Why `parameters` is not a JSON Schema object ("" when it is, or when it is absent)."""
    if parameters is None:
        return ""
    if not isinstance(parameters, dict):
        return "must be a JSON Schema object"
    if parameters.get("type", "object") != "object":
        return 'must describe an object ("type": "object")'
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as exc:
        # The JSON pointer into the schema, so a long schema's author finds the broken keyword.
        where = "".join(f"/{p}" for p in exc.absolute_path) or "/"
        return f"is not a valid JSON Schema at {where}: {exc.message}"
    return ""


def check_tier(config: dict[str, Any], limits: TierLimits, *, prefix: str = "config") -> list[Violation]:
    """The tier's limits on a config, each as a Violation whose type is the limit's name."""
    out = []
    model = config.get("model", "")
    if model and not limits.allows_model(model):
        out.append(
            Violation(
                _join(prefix, "model"),
                f"model {model!r} is not available on the {limits.name} tier",
                LIMIT_MODELS,
            )
        )
    for i, fallback in enumerate(config.get("fallback_models", [])):
        # The format check reports a malformed entry; the tier speaks only of well-formed ones.
        if _MODEL.fullmatch(fallback) and not limits.allows_model(fallback):
            out.append(
                Violation(
                    _join(prefix, f"fallback_models[{i}]"),
                    f"model {fallback!r} is not available on the {limits.name} tier",
                    LIMIT_MODELS,
                )
            )
    tools = len(config.get("tools", []))
    if tools > limits.max_tools_per_agent:
        out.append(
            Violation(
                _join(prefix, "tools"),
                f"{tools} tools; the {limits.name} tier allows {limits.max_tools_per_agent}",
                LIMIT_TOOLS,
            )
        )
    # The raw entries: a dry run (ValidateAgentConfig) checks the tier of a config bad in format too.
    for i, tool in enumerate(config.get("tools", [])):
        timeout_ms = tool.get("timeout_ms", 0)
        if isinstance(timeout_ms, int) and timeout_ms > limits.max_tool_timeout_ms:
            out.append(
                Violation(
                    _join(prefix, f"tools[{i}].timeout_ms"),
                    f"{timeout_ms} ms; the {limits.name} tier allows {limits.max_tool_timeout_ms}",
                    LIMIT_TOOL_TIMEOUT,
                )
            )
    tokens = config.get("context_policy", {}).get("max_context_tokens", 0)
    if tokens > limits.max_context_tokens:
        out.append(
            Violation(
                _join(prefix, "context_policy.max_context_tokens"),
                f"{tokens} tokens; the {limits.name} tier allows {limits.max_context_tokens}",
                LIMIT_CONTEXT,
            )
        )
    temperature = config.get("temperature")
    if isinstance(temperature, int | float) and not (
        limits.min_temperature <= temperature <= limits.max_temperature
    ):
        out.append(
            Violation(
                _join(prefix, "temperature"),
                f"the {limits.name} tier allows {limits.min_temperature} to {limits.max_temperature}",
                LIMIT_TEMPERATURE,
            )
        )
    return out
