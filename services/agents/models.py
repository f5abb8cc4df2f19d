"""Domain records of the agents service: plain Python, no proto, no SQL.

An agent's content (what a version freezes) is a JSON-shaped dict:
    {"display_name": str, "description": str, "state": "ACTIVE"|"INACTIVE", "config": {...}}
where config is the AgentConfig in its proto-JSON form with proto field names and without default
values (so a key present means "set"): model, system_prompt, temperature, max_output_tokens, tools,
context_policy, metadata, busy_policy.
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
