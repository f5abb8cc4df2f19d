"""Proto <-> domain conversions of the agents service (the servicer's only helpers)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from google.protobuf import json_format, struct_pb2

from agentmesh.agents.v1 import agents_service_pb2 as pb
from services.agents.models import Agent, AgentEvent, AgentVersion, FieldDiff, Template
from services.platform import errors
from services.platform.timestamps import to_timestamp


def config_to_dict(config: pb.AgentConfig) -> dict[str, Any]:
    """The stored form of a request's config (models.py); a tool's execution CLIENT is left out, so
    it reads the same as unset. A number this contract does not name stays (validation rejects it)."""
    data = json_format.MessageToDict(config, preserving_proto_field_name=True)
    for tool in data.get("tools", []):
        if tool.get("execution") == "TOOL_EXECUTION_CLIENT":
            del tool["execution"]
    return data


def config_from_dict(data: dict[str, Any]) -> pb.AgentConfig:
    """The proto of a stored config; a tool without an execution reads as TOOL_EXECUTION_CLIENT."""
    config = json_format.ParseDict(data, pb.AgentConfig(), ignore_unknown_fields=True)
    for tool in config.tools:
        if tool.execution == pb.TOOL_EXECUTION_UNSPECIFIED:
            tool.execution = pb.TOOL_EXECUTION_CLIENT
    return config


def state_name(state: pb.AgentState.ValueType) -> str | None:
    """ "ACTIVE" / "INACTIVE" for the enum value, None for UNSPECIFIED; INVALID_ARGUMENT otherwise
    (proto3 enums are open: a request may carry a number this contract does not name)."""
    if state == pb.AGENT_STATE_UNSPECIFIED:
        return None
    try:
        return pb.AgentState.Name(state).removeprefix("AGENT_STATE_")
    except ValueError:
        raise errors.InvalidArgument.field("state", f"unknown state {state}") from None


def _state_value(name: str) -> pb.AgentState.ValueType:
    return pb.AgentState.Value(f"AGENT_STATE_{name}")


# Converted agents by (id, version, update time, state): parsing the config dict into the proto
# (json_format) cost more than the rest of a cached GetAgent. Callers put the message into a
# response, which copies it, so one instance is shared safely.
_CONVERTED: OrderedDict[tuple[str, int, int, str], pb.Agent] = OrderedDict()
_CONVERTED_MAX = 10_000


def agent_to_proto(agent: Agent) -> pb.Agent:
    key = (agent.id, agent.version, agent.update_time_us, agent.state)
    found = _CONVERTED.get(key)
    if found is None:
        found = _CONVERTED[key] = _agent_to_proto(agent)
        if len(_CONVERTED) > _CONVERTED_MAX:
            _CONVERTED.popitem(last=False)
    return found


def _agent_to_proto(agent: Agent) -> pb.Agent:
    return pb.Agent(
        id=agent.id,
        display_name=agent.display_name,
        description=agent.description,
        state=_state_value(agent.state),
        config=config_from_dict(agent.config),
        version=agent.version,
        etag=agent.etag,
        create_time=to_timestamp(agent.create_time_us),
        update_time=to_timestamp(agent.update_time_us),
        creator=agent.creator,
        template_id=agent.template_id,
    )


def content_of(agent: pb.Agent) -> dict[str, Any]:
    """The content form of a request's agent (every key present; unset fields at their default)."""
    return {
        "display_name": agent.display_name,
        "description": agent.description,
        "state": state_name(agent.state) or "",
        "config": config_to_dict(agent.config),
    }


def version_to_proto(v: AgentVersion) -> pb.AgentVersion:
    content = v.content
    return pb.AgentVersion(
        agent_id=v.agent_id,
        version=v.version,
        display_name=content["display_name"],
        description=content["description"],
        state=_state_value(content["state"]),
        config=config_from_dict(content["config"]),
        change_type=pb.ChangeType.Value(f"CHANGE_TYPE_{v.change_type.value}"),
        changed_fields=v.changed_fields,
        author=v.author,
        create_time=to_timestamp(v.create_time_us),
        source_version=v.source_version,
    )


def template_to_proto(t: Template) -> pb.Template:
    return pb.Template(
        id=t.id,
        display_name=t.display_name,
        description=t.description,
        config=config_from_dict(t.config),
        builtin=t.builtin,
        create_time=to_timestamp(t.create_time_us),
    )


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    else:
        json_format.ParseDict(data, value)
    return value


def violation_to_proto(v: errors.Violation) -> pb.ConfigViolation:
    return pb.ConfigViolation(field=v.subject, description=v.description, limit=v.type)


def diff_to_proto(d: FieldDiff) -> pb.FieldDiff:
    return pb.FieldDiff(path=d.path, old_value=_value(d.old), new_value=_value(d.new))


def event_to_proto(e: AgentEvent) -> pb.AgentEvent:
    return pb.AgentEvent(
        change_type=pb.ChangeType.Value(f"CHANGE_TYPE_{e.change_type.value}"),
        tenant_id=e.tenant_id,
        agent_id=e.agent_id,
        version=e.version,
        agent=agent_to_proto(e.agent) if e.agent else None,
        event_time=to_timestamp(e.event_time_us),
    )
