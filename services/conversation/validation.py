"""Input checks. Each collects every problem and raises one INVALID_ARGUMENT with all violations."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from services.conversation.models import ROLES, USAGE_SOURCES, MessageUsage, ToolCallRef
from services.platform.validation import MAX_ID_CHARS, Violations, require_id

__all__ = ["MAX_ID_CHARS", "Violations", "calls", "message", "metadata", "model", "require_id", "usage"]

MAX_CONTENT_BYTES = 64 * 1024
MAX_SYSTEM_PROMPT_BYTES = 256 * 1024
MAX_TITLE_CHARS = 512
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 4096
MAX_QUERY_CHARS = 256
MAX_RETENTION_DAYS = 36_500
MAX_TOOL_CALLS = 128
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_MODEL_CHARS = 256


def metadata(v: Violations, field: str, values: Mapping[str, str]) -> None:
    if len(values) > MAX_METADATA_ENTRIES:
        v.add(field, f"must have at most {MAX_METADATA_ENTRIES} entries")
        return
    for key, value in values.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            v.add(f"{field}[{key[:32]}]", f"keys must be 1 to {MAX_METADATA_KEY_CHARS} characters")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            v.add(f"{field}[{key[:32]}]", f"values must be at most {MAX_METADATA_VALUE_CHARS} characters")


def message(
    v: Violations,
    *,
    role: str,
    content: str,
    tool_call_id: str,
    meta: Mapping[str, str],
    tool_calls: Sequence[ToolCallRef] = (),
) -> None:
    v.check(role in ROLES, "message.role", "must be one of system, user, assistant, tool")
    if not content and not tool_calls:
        v.add("message.content", "is required")
    elif len(content.encode()) > MAX_CONTENT_BYTES:
        v.add("message.content", f"must be at most {MAX_CONTENT_BYTES} bytes (UTF-8)")
    v.check(
        len(tool_call_id) <= MAX_ID_CHARS,
        "message.tool_call_id",
        f"must be at most {MAX_ID_CHARS} characters",
    )
    if role == "tool":
        v.check(bool(tool_call_id), "message.tool_call_id", "is required on a tool message")
    elif role in ("system", "user"):
        v.check(not tool_call_id, "message.tool_call_id", "is only for assistant and tool messages")
    metadata(v, "message.metadata", meta)
    calls(v, role=role, tool_calls=tool_calls)


def calls(v: Violations, *, role: str, tool_calls: Sequence[ToolCallRef]) -> None:
    if not tool_calls:
        return
    if role != "assistant":
        v.add("message.tool_calls", "are only for assistant messages")
        return
    if len(tool_calls) > MAX_TOOL_CALLS:
        v.add("message.tool_calls", f"must be at most {MAX_TOOL_CALLS}")
        return
    seen: set[str] = set()
    for i, call in enumerate(tool_calls):
        field = f"message.tool_calls[{i}]"
        if not call.id or len(call.id) > MAX_ID_CHARS:
            v.add(f"{field}.id", f"must be 1 to {MAX_ID_CHARS} characters")
        elif call.id in seen:
            v.add(f"{field}.id", "must be unique within the message")
        seen.add(call.id)
        v.check(bool(_TOOL_NAME.fullmatch(call.name)), f"{field}.name", "must match [a-zA-Z0-9_-]{1,64}")
        if len(call.arguments_json.encode()) > MAX_CONTENT_BYTES:
            v.add(f"{field}.arguments_json", f"must be at most {MAX_CONTENT_BYTES} bytes (UTF-8)")
            continue
        try:
            arguments = json.loads(call.arguments_json)
        except ValueError:
            arguments = None
        # What the model wrote is kept as it wrote it, but it must be a JSON object to be a call.
        v.check(isinstance(arguments, dict), f"{field}.arguments_json", "must be a JSON object")


def model(v: Violations, field: str, value: str) -> None:
    if not value:
        v.add(field, "is required")
    elif len(value) > MAX_MODEL_CHARS or not value.isprintable() or " " in value:
        v.add(field, f"must be 1 to {MAX_MODEL_CHARS} printable characters without spaces")


def usage(v: Violations, *, role: str, usage: MessageUsage | None) -> None:
    if usage is None:
        return
    if role != "assistant":
        v.add("message.usage", "is only accepted on assistant messages")
        return
    model(v, "message.usage.model", usage.model)
    for name in ("prompt_tokens", "completion_tokens", "tool_calls", "duration_ms"):
        v.check(getattr(usage, name) >= 0, f"message.usage.{name}", "must not be negative")
    v.check(usage.source in USAGE_SOURCES, "message.usage.source", "must be PROVIDER or ESTIMATED")
    v.check(
        len(usage.run_id) <= MAX_ID_CHARS,
        "message.usage.run_id",
        f"must be at most {MAX_ID_CHARS} characters",
    )
