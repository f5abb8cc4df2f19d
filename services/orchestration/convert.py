"""Every proto <-> domain conversion of orchestration: its own messages, the agents and conversation
messages it reads from its peers, and the Chat actions. Enums travel by name; times through
services/platform/timestamps.py."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.rpc import status_pb2

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.conversation.v1 import conversation_service_pb2 as conv_pb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from services.orchestration.models import (
    Action,
    AgentSnapshot,
    AgentTool,
    BusyPolicy,
    CancelAction,
    ModelFallback,
    QuotaState,
    ResponseFormat,
    ResumeAction,
    Run,
    RunError,
    RunEvent,
    RunToolCall,
    SendAction,
    Session,
    ToolDecision,
    ToolDecisionsAction,
    ToolExecution,
    ToolOutput,
    ToolOutputsAction,
    Usage,
)
from services.orchestration.providers import ChatMessage, ToolCall
from services.orchestration.structured import format_problems
from services.platform import errors
from services.platform.timestamps import to_timestamp

# Roles as the providers name them ("system", "user", "assistant", "tool").
Role = str


def usage_to_proto(usage: Usage | None) -> pb.Usage | None:
    if usage is None:
        return None
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        model=usage.model,
        source=pb.UsageSource.Value(f"USAGE_SOURCE_{usage.source or 'UNSPECIFIED'}"),
        tool_calls=usage.tool_calls,
        duration_ms=usage.duration_ms,
    )


def message_usage_to_proto(usage: Usage, run_id: str) -> conv_pb.MessageUsage:
    return conv_pb.MessageUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        model=usage.model,
        source=conv_pb.UsageSource.Value(f"USAGE_SOURCE_{usage.source or 'ESTIMATED'}"),
        tool_calls=usage.tool_calls,
        duration_ms=usage.duration_ms,
        run_id=run_id,
    )


def quota_from_proto(q: conv_pb.Quota) -> QuotaState:
    return QuotaState(
        limit_tokens=q.limit_tokens,
        used_tokens=q.used_tokens,
        limit_cost_micros=q.limit_cost_micros,
        used_cost_micros=q.used_cost_micros,
    )


def _fallbacks_to_proto(fallbacks: tuple[ModelFallback, ...]) -> list[pb.ModelFallback]:
    return [pb.ModelFallback(model=f.model, reason=f.reason) for f in fallbacks]


def _error_to_proto(error: RunError | None) -> pb.RunError | None:
    return None if error is None else pb.RunError(code=error.code, message=error.message)


def session_to_proto(s: Session) -> pb.Session:
    return pb.Session(
        id=s.id,
        agent_id=s.agent_id,
        agent_version=s.agent_version,
        conversation_id=s.conversation_id,
        user_id=s.user_id,
        state=pb.SessionState.Value(f"SESSION_STATE_{s.state.value}"),
        active_run_id=s.active_run_id,
        create_time=to_timestamp(s.create_time_us),
        update_time=to_timestamp(s.update_time_us),
        end_time=to_timestamp(s.end_time_us),
        title=s.title,
    )


def run_to_proto(r: Run) -> pb.Run:
    return pb.Run(
        id=r.id,
        session_id=r.session_id,
        state=pb.RunState.Value(f"RUN_STATE_{r.state.value}"),
        agent_version=r.agent_version,
        user_message_id=r.user_message_id,
        assistant_message_id=r.assistant_message_id,
        usage=usage_to_proto(r.usage),
        error=_error_to_proto(r.error),
        last_event_id=r.last_event_id,
        create_time=to_timestamp(r.create_time_us),
        start_time=to_timestamp(r.start_time_us),
        end_time=to_timestamp(r.end_time_us),
        model=r.model,
        fallbacks=_fallbacks_to_proto(r.fallbacks),
        model_override=r.model_override,
        steps=r.steps,
        wait_expire_time=to_timestamp(r.wait_expire_time_us) if r.wait_expire_time_us else None,
        pending_tool_calls=[tool_call_to_proto(c) for c in r.pending_tool_calls],
    )


def tool_call_to_proto(c: RunToolCall) -> pb.ToolCall:
    return pb.ToolCall(
        id=c.id,
        name=c.name,
        arguments_json=c.arguments_json,
        status=pb.ToolCallStatus.Value(f"TOOL_CALL_STATUS_{c.status.value}"),
        output=c.output,
        is_error=c.is_error,
        duration_ms=c.duration_ms,
        requires_approval=c.requires_approval,
        execution=agents_pb.ToolExecution.Value(f"TOOL_EXECUTION_{c.execution.value}"),
        step=c.step,
    )


def tool_outputs_from_proto(outputs: Iterable[pb.ToolOutput]) -> tuple[ToolOutput, ...]:
    return tuple(ToolOutput(o.tool_call_id, o.output, o.is_error) for o in outputs)


def tool_decisions_from_proto(decisions: Iterable[pb.ToolDecision]) -> tuple[ToolDecision, ...]:
    """A decision without any of its choices keeps all three unset (validation names it)."""
    found = []
    for d in decisions:
        kind = d.WhichOneof("decision")
        found.append(
            ToolDecision(
                tool_call_id=d.tool_call_id,
                approve=kind == "approve" and d.approve,
                deny_reason=d.deny_reason if kind == "deny_reason" else None,
                edited_arguments_json=d.edited_arguments_json if kind == "edited_arguments_json" else None,
            )
        )
    return tuple(found)


def _tool_from_proto(tool: agents_pb.Tool) -> AgentTool:
    return AgentTool(
        name=tool.name,
        description=tool.description,
        parameters=json_format.MessageToDict(tool.parameters),
        execution=ToolExecution.HTTP
        if tool.execution == agents_pb.TOOL_EXECUTION_HTTP
        else ToolExecution.CLIENT,
        url=tool.url,
        timeout_ms=tool.timeout_ms,
        requires_approval=tool.requires_approval,
    )


def event_to_proto(e: RunEvent) -> pb.RunEvent:
    return pb.RunEvent(
        event_id=e.event_id,
        run_id=e.run_id,
        session_id=e.session_id,
        type=pb.RunEventType.Value(f"RUN_EVENT_TYPE_{e.type.value}"),
        text_delta=e.text_delta,
        final_message=e.final_message,
        usage=usage_to_proto(e.usage),
        error=_error_to_proto(e.error),
        agent_version=e.agent_version,
        event_time=to_timestamp(e.event_time_us),
        model=e.model,
        fallbacks=_fallbacks_to_proto(e.fallbacks),
        tool_calls=[tool_call_to_proto(c) for c in e.tool_calls],
        structured=structured_to_proto(e.structured),
    )


def structured_to_proto(value: Any) -> struct_pb2.Struct | None:
    """A parsed answer as RunEvent.structured: an object as it is, any other JSON value under "value"
    (a Struct holds only objects)."""
    if value is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(value if isinstance(value, dict) else {"value": value})
    return struct


def _format(fmt: agents_pb.ResponseFormat) -> ResponseFormat:
    return ResponseFormat(
        json=fmt.type == agents_pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        schema=json_format.MessageToDict(fmt.schema),
        name=fmt.name or "answer",
    )


def response_format_from_proto(
    fmt: agents_pb.ResponseFormat, *, present: bool, field: str = "response_format"
) -> ResponseFormat | None:
    """A message's response format: None when not `present`; INVALID_ARGUMENT naming the field (and
    the path inside a broken schema) when it is not one."""
    if not present:
        return None
    if fmt.type not in agents_pb.ResponseFormatType.values():
        raise errors.InvalidArgument.field(f"{field}.type", f"unknown response format type {fmt.type}")
    found = _format(fmt)
    bad = format_problems(found, field)
    if bad:
        raise errors.InvalidArgument(f"{bad[0].field}: {bad[0].description}", bad)
    return found


def status_pb(error: errors.AgentmeshError) -> status_pb2.Status:
    """The google.rpc.Status a unary call failing with `error` carries (code, message, details)."""
    # to_status is the one mapping of domain errors; its trailers hold the serialized Status.
    trailers = dict(errors.to_status(error).trailing_metadata)
    return status_pb2.Status.FromString(trailers["grpc-status-details-bin"])


def _busy_policy(value: int) -> BusyPolicy | None:
    """None for BUSY_POLICY_UNSPECIFIED; a number no BusyPolicy has raises nothing (None too)."""
    if value == agents_pb.BUSY_POLICY_UNSPECIFIED or value not in agents_pb.BusyPolicy.values():
        return None
    return BusyPolicy(
        agents_pb.BusyPolicy.Name(agents_pb.BusyPolicy.ValueType(value)).removeprefix("BUSY_POLICY_")
    )


def busy_policy_from_proto(value: int, field: str = "busy_policy") -> BusyPolicy | None:
    """A request's busy policy: None when unspecified, INVALID_ARGUMENT when it names none."""
    if value not in agents_pb.BusyPolicy.values():
        raise errors.InvalidArgument.field(field, f"unknown busy policy {value}")
    return _busy_policy(value)


def action_from_proto(request: pb.ChatRequest) -> Action | None:
    """The action a ChatRequest carries; None when it carries none (ignored, as before)."""
    kind = request.WhichOneof("action")
    if kind == "message":
        m = request.message
        return SendAction(
            m.text,
            m.request_id,
            busy_policy_from_proto(m.busy_policy, "message.busy_policy"),
            model_override=m.model_override,
            response_format=response_format_from_proto(
                m.response_format, present=m.HasField("response_format"), field="message.response_format"
            ),
        )
    if kind == "cancel":
        return CancelAction(request.cancel.run_id)
    if kind == "resume":
        return ResumeAction(request.resume.run_id, request.resume.after_event_id)
    if kind == "tool_outputs":
        o = request.tool_outputs
        return ToolOutputsAction(o.run_id, tool_outputs_from_proto(o.outputs))
    if kind == "tool_decisions":
        d = request.tool_decisions
        return ToolDecisionsAction(d.run_id, tool_decisions_from_proto(d.decisions))
    return None


def agent_from_proto(agent: agents_pb.Agent, tenant_id: str) -> AgentSnapshot:
    config = agent.config
    return AgentSnapshot(
        id=agent.id,
        tenant_id=tenant_id,
        version=agent.version,
        active=agent.state == agents_pb.AGENT_STATE_ACTIVE,
        model=config.model or "echo:default",
        system_prompt=config.system_prompt,
        temperature=config.temperature if config.HasField("temperature") else None,
        max_output_tokens=config.max_output_tokens,
        max_context_tokens=config.context_policy.max_context_tokens,
        busy_policy=_busy_policy(config.busy_policy),
        fallback_models=tuple(config.fallback_models),
        allow_model_override=config.allow_model_override,
        tools=tuple(_tool_from_proto(t) for t in config.tools),
        # Checked by agents when configured; unset or TEXT: text.
        response_format=_format(config.response_format)
        if config.response_format.type == agents_pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
        else None,
    )


def role_to_proto(role: Role) -> conv_pb.MessageRole.ValueType:
    return conv_pb.MessageRole.Value(f"MESSAGE_ROLE_{role.upper()}")


def role_from_proto(role: conv_pb.MessageRole.ValueType) -> Role:
    """The role's name: user, assistant, tool or system (empty when unset)."""
    return "" if not role else conv_pb.MessageRole.Name(role).removeprefix("MESSAGE_ROLE_").lower()


def context_from_proto(messages: list[conv_pb.Message]) -> list[ChatMessage]:
    """The context window as providers take it; an empty system prompt is left out."""
    return [
        ChatMessage(
            conv_pb.MessageRole.Name(m.role).removeprefix("MESSAGE_ROLE_").lower()
            if m.role
            in (conv_pb.MESSAGE_ROLE_SYSTEM, conv_pb.MESSAGE_ROLE_ASSISTANT, conv_pb.MESSAGE_ROLE_TOOL)
            else "user",
            m.content,
            tool_calls=tuple(ToolCall(c.id, c.name, c.arguments_json) for c in m.tool_calls),
            tool_call_id=m.tool_call_id if m.role == conv_pb.MESSAGE_ROLE_TOOL else "",
        )
        for m in messages
        if m.content or m.role != conv_pb.MESSAGE_ROLE_SYSTEM
    ]
