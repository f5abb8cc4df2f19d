"""Domain records of the agents service: plain Python, no proto, no SQL.

An agent's content (what a version freezes) is a JSON-shaped dict:
    {"display_name": str, "description": str, "state": "ACTIVE"|"INACTIVE", "config": {...}}
where config is the AgentConfig in its proto-JSON form with proto field names and without default
values (so a key present means "set"): model, system_prompt, temperature, max_output_tokens, tools,
context_policy, metadata, busy_policy, fallback_models, allow_model_override, response_format
(type "RESPONSE_FORMAT_TYPE_TEXT"|"RESPONSE_FORMAT_TYPE_JSON_SCHEMA", schema, name). A tool's execution is absent for client tools (see `Tool`).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"
STATES = (ACTIVE, INACTIVE)

CONFIG_FIELDS = (
    "model",
    "system_prompt",
    "temperature",
    "max_output_tokens",
    "tools",
    "context_policy",
    "metadata",
    "busy_policy",
    "fallback_models",
    "allow_model_override",
    "response_format",
)
# The top-level paths a diff and a field mask know.
CONTENT_FIELDS = ("display_name", "description", "state", "config")


class ChangeType(enum.StrEnum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    ACTIVATED = "ACTIVATED"
    DEACTIVATED = "DEACTIVATED"
    ROLLED_BACK = "ROLLED_BACK"
    DELETED = "DELETED"


class ToolExecution(enum.StrEnum):
    """Who runs a tool's calls: the client (the run waits for its output) or agentmesh, over HTTP."""

    CLIENT = "CLIENT"
    HTTP = "HTTP"


# A tool's execution as stored in a config (proto-JSON names). Absent means CLIENT: configs stored
# before tools had an execution, and the stored form of every client tool (so that sending CLIENT
# explicitly or leaving it unset is no change in a diff).
EXECUTION_KEY = {ToolExecution.HTTP: "TOOL_EXECUTION_HTTP"}
_EXECUTION_OF_KEY = {
    "TOOL_EXECUTION_UNSPECIFIED": ToolExecution.CLIENT,
    "TOOL_EXECUTION_CLIENT": ToolExecution.CLIENT,
    "TOOL_EXECUTION_HTTP": ToolExecution.HTTP,
}
# An http tool's timeout when its timeout_ms is 0.
DEFAULT_TOOL_TIMEOUT_MS = 10_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tool:
    """One entry of config["tools"], read."""

    name: str
    description: str = ""
    # A JSON Schema object; None when the tool takes no declared arguments.
    parameters: dict[str, Any] | None = None
    execution: ToolExecution = ToolExecution.CLIENT
    url: str = ""
    timeout_ms: int = 0
    requires_approval: bool = False

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> Tool:
        """A stored tool entry; ValueError for an execution this version does not know."""
        execution = data.get("execution", "TOOL_EXECUTION_CLIENT")
        if execution not in _EXECUTION_OF_KEY:
            raise ValueError(f"unknown execution {execution!r}")
        return cls(
            name=data.get("name", ""),
            description=data.get("description", ""),
            parameters=data.get("parameters"),
            execution=_EXECUTION_OF_KEY[execution],
            url=data.get("url", ""),
            timeout_ms=int(data.get("timeout_ms", 0)),
            requires_approval=bool(data.get("requires_approval", False)),
        )


def etag_of(version: int) -> str:
    return f'"v{version}"'


@dataclasses.dataclass(frozen=True, kw_only=True)
class Agent:
    id: str
    tenant_id: str
    display_name: str
    description: str
    state: str
    config: dict[str, Any]
    version: int
    creator: str
    template_id: str
    create_time_us: int
    update_time_us: int

    @property
    def etag(self) -> str:
        return etag_of(self.version)

    def content(self) -> dict[str, Any]:
        return {
            "display_name": self.display_name,
            "description": self.description,
            "state": self.state,
            "config": self.config,
        }

    def with_content(self, content: dict[str, Any], *, version: int, now_us: int) -> Agent:
        return dataclasses.replace(
            self,
            display_name=content["display_name"],
            description=content["description"],
            state=content["state"],
            config=content["config"],
            version=version,
            update_time_us=now_us,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentVersion:
    agent_id: str
    tenant_id: str
    version: int
    content: dict[str, Any]
    change_type: ChangeType
    changed_fields: list[str]
    author: str
    create_time_us: int
    source_version: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Template:
    id: str
    tenant_id: str
    display_name: str
    description: str
    config: dict[str, Any]
    builtin: bool = False
    create_time_us: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentEvent:
    change_type: ChangeType
    tenant_id: str
    agent_id: str
    version: int
    # The agent as of this version; None for DELETED.
    agent: Agent | None
    event_time_us: int

    def to_json(self) -> dict[str, Any]:
        return {
            "change_type": self.change_type.value,
            "tenant_id": self.tenant_id,
            "agent_id": self.agent_id,
            "version": self.version,
            "agent": dataclasses.asdict(self.agent) if self.agent else None,
            "event_time_us": self.event_time_us,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentEvent:
        return cls(
            change_type=ChangeType(data["change_type"]),
            tenant_id=data["tenant_id"],
            agent_id=data["agent_id"],
            version=int(data["version"]),
            agent=Agent(**data["agent"]) if data.get("agent") else None,
            event_time_us=int(data["event_time_us"]),
        )


@dataclasses.dataclass(frozen=True)
class FieldDiff:
    path: str
    old: Any
    new: Any


def diff_content(old: dict[str, Any], new: dict[str, Any]) -> list[FieldDiff]:
    """Field-level differences: display_name, description, state and config.<field>."""
    diffs = [
        FieldDiff(path, old.get(path), new.get(path))
        for path in ("display_name", "description", "state")
        if old.get(path) != new.get(path)
    ]
    old_config, new_config = old.get("config") or {}, new.get("config") or {}
    for name in CONFIG_FIELDS:
        if old_config.get(name) != new_config.get(name):
            diffs.append(FieldDiff(f"config.{name}", old_config.get(name), new_config.get(name)))
    return diffs
