"""Format rules (INVALID_ARGUMENT) and tier limits (FAILED_PRECONDITION) of agent content.

Both return every violation at once, so ValidateAgentConfig and the write RPCs report the same list.
Config dicts are in the proto-JSON form described in models.py.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema

from services.platform.errors import FieldViolation, Violation
from services.platform.tiers import TierLimits

PROVIDERS = ("echo", "openai")
MAX_DISPLAY_NAME = 100
MAX_DESCRIPTION = 1000
MAX_SYSTEM_PROMPT_BYTES = 32 * 1024
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1024
MAX_TOOL_DESCRIPTION = 1024
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_MODEL = re.compile(r"([a-z0-9_-]+):([A-Za-z0-9._:/-]{1,128})")

# Limit names reported in ConfigViolation.limit and PreconditionFailure.Violation.type.
LIMIT_MAX_AGENTS = "max_agents"
LIMIT_MODELS = "allowed_models"
LIMIT_TOOLS = "max_tools"
LIMIT_CONTEXT = "max_context_tokens"
LIMIT_TEMPERATURE = "temperature_range"


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


def check_config(config: dict[str, Any], *, prefix: str = "config") -> list[FieldViolation]:
    """The format rules of a config (tier limits are `check_tier`)."""
    out: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        out.append(FieldViolation(_join(prefix, field), description))

    model = config.get("model", "")
    match = _MODEL.fullmatch(model)
    if not model:
        bad("model", 'is required, as "provider:model"')
    elif match is None:
        bad("model", 'must be "provider:model", for example "echo:default"')
    elif match.group(1) not in PROVIDERS:
        bad("model", f"unknown provider {match.group(1)!r}; known: {', '.join(PROVIDERS)}")
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
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"is not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else "")
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
    tools = len(config.get("tools", []))
    if tools > limits.max_tools_per_agent:
        out.append(
            Violation(
                _join(prefix, "tools"),
                f"{tools} tools; the {limits.name} tier allows {limits.max_tools_per_agent}",
                LIMIT_TOOLS,
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
