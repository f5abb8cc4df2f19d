"""Proto <-> domain conversions of the conversation service (the servicer's only helpers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from services.conversation import models
from services.platform import errors
from services.platform.timestamps import to_timestamp

_ROLE_TO_PB: dict[str, pb.MessageRole.ValueType] = {
    "system": pb.MESSAGE_ROLE_SYSTEM,
    "user": pb.MESSAGE_ROLE_USER,
    "assistant": pb.MESSAGE_ROLE_ASSISTANT,
    "tool": pb.MESSAGE_ROLE_TOOL,
}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}
_STATUS_TO_PB: dict[str, pb.ConversationStatus.ValueType] = {
    models.ACTIVE: pb.CONVERSATION_STATUS_ACTIVE,
    models.CLOSED: pb.CONVERSATION_STATUS_CLOSED,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


def conversation_to_proto(c: models.Conversation) -> pb.Conversation:
    return pb.Conversation(
        id=c.id,
        tenant_id=c.tenant_id,
        user_id=c.user_id,
        agent_id=c.agent_id,
        agent_version=c.agent_version,
        title=c.title,
        status=_STATUS_TO_PB.get(c.status, pb.CONVERSATION_STATUS_UNSPECIFIED),
        metadata=c.metadata,
        message_count=c.message_count,
        token_count=c.token_count,
        create_time=to_timestamp(c.create_time),
        update_time=to_timestamp(c.update_time),
        last_message_time=to_timestamp(c.last_message_time),
        active_message_id=c.active_leaf_id,
        path_length=c.path_length,
    )


def message_to_proto(m: models.Message, siblings: models.Siblings | None = None) -> pb.Message:
    """`siblings`: the ids sharing its parent (ListMessages, GetMessage); None leaves them unset."""
    return pb.Message(
        parent_id=m.parent_id,
        active=m.on_path,
        sibling_ids=siblings.ids if siblings else (),
        sibling_index=siblings.index(m.id) if siblings else 0,
        id=m.id,
        conversation_id=m.conversation_id,
        sequence=m.sequence,
        role=_ROLE_TO_PB.get(m.role, pb.MESSAGE_ROLE_UNSPECIFIED),
        content=m.content,
        token_count=m.token_count,
        metadata=m.metadata,
        tool_call_id=m.tool_call_id,
        create_time=to_timestamp(m.create_time),
        usage=None if m.usage is None else usage_to_proto(m.usage),
        tool_calls=[
            pb.ToolCallRef(id=c.id, name=c.name, arguments_json=c.arguments_json) for c in m.tool_calls
        ],
    )


_SOURCE_TO_PB: dict[str, pb.UsageSource.ValueType] = {
    models.PROVIDER: pb.USAGE_SOURCE_PROVIDER,
    models.ESTIMATED: pb.USAGE_SOURCE_ESTIMATED,
}
_SOURCE_FROM_PB = {v: k for k, v in _SOURCE_TO_PB.items()}
_GROUPING_FROM_PB: dict[int, str] = {
    pb.USAGE_GROUPING_USER: "user",
    pb.USAGE_GROUPING_AGENT: "agent",
    pb.USAGE_GROUPING_MODEL: "model",
    pb.USAGE_GROUPING_DAY: "day",
}


def usage_to_proto(u: models.MessageUsage) -> pb.MessageUsage:
    return pb.MessageUsage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        model=u.model,
        source=_SOURCE_TO_PB.get(u.source, pb.USAGE_SOURCE_UNSPECIFIED),
        tool_calls=u.tool_calls,
        duration_ms=u.duration_ms,
        cost_micros=u.cost_micros,
        run_id=u.run_id,
        user_id=u.user_id,
    )


def usage_from_proto(u: pb.MessageUsage) -> models.MessageUsage:
    # total_tokens, cost_micros and user_id are output only: the service computes and assigns them.
    # An unknown source becomes "", which validation names; UNSPECIFIED reads as ESTIMATED.
    source = (
        models.ESTIMATED if u.source == pb.USAGE_SOURCE_UNSPECIFIED else _SOURCE_FROM_PB.get(u.source, "")
    )
    return models.MessageUsage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        model=u.model,
        source=source,
        tool_calls=u.tool_calls,
        duration_ms=u.duration_ms,
        run_id=u.run_id,
    )


def groupings_from_proto(values: Sequence[int]) -> list[str]:
    """By name; an unknown or UNSPECIFIED number becomes its own text, which the service refuses
    with the field's index."""
    return [_GROUPING_FROM_PB.get(v, str(v)) for v in values]


def usage_row_to_proto(r: models.UsageRow) -> pb.UsageRow:
    return pb.UsageRow(**dataclasses.asdict(r))


def quota_to_proto(q: models.Quota) -> pb.Quota:
    return pb.Quota(
        limit_tokens=q.limit_tokens,
        used_tokens=q.used_tokens,
        remaining_tokens=q.remaining_tokens,
        limit_cost_micros=q.limit_cost_micros,
        used_cost_micros=q.used_cost_micros,
        reset_time=to_timestamp(q.reset_time),
    )


def usage_response_to_proto(u: models.Usage) -> pb.GetUsageResponse:
    return pb.GetUsageResponse(
        totals=usage_row_to_proto(u.totals),
        rows=[usage_row_to_proto(r) for r in u.rows],
        quota=quota_to_proto(u.quota),
    )


def new_message_from_proto(m: pb.Message) -> models.NewMessage:
    # An unknown role becomes "", which the service's validation names as the bad field.
    return models.NewMessage(
        role=_ROLE_FROM_PB.get(m.role, ""),
        content=m.content,
        metadata=dict(m.metadata),
        tool_call_id=m.tool_call_id,
        usage=usage_from_proto(m.usage) if m.HasField("usage") else None,
        tool_calls=tuple(models.ToolCallRef(c.id, c.name, c.arguments_json) for c in m.tool_calls),
    )


def status_from_proto(value: pb.ConversationStatus.ValueType) -> str:
    """ "" for UNSPECIFIED (no filter); INVALID_ARGUMENT for a number the contract does not name."""
    if value == pb.CONVERSATION_STATUS_UNSPECIFIED:
        return ""
    if value not in _STATUS_FROM_PB:
        raise errors.InvalidArgument.field("status", "is not a known conversation status")
    return _STATUS_FROM_PB[value]


def descending_from_proto(order: pb.SortOrder.ValueType) -> bool:
    if order not in (pb.SORT_ORDER_UNSPECIFIED, pb.SORT_ORDER_ASCENDING, pb.SORT_ORDER_DESCENDING):
        raise errors.InvalidArgument.field("order", "is not a known sort order")
    return order == pb.SORT_ORDER_DESCENDING


def context_to_proto(window: models.ContextWindow) -> pb.GetContextResponse:
    return pb.GetContextResponse(
        messages=[message_to_proto(m) for m in window.messages],
        kept=[pb.SequenceRange(first=r.first, last=r.last) for r in window.kept],
        dropped=[pb.SequenceRange(first=r.first, last=r.last) for r in window.dropped],
        token_budget=window.token_budget,
        system_prompt_tokens=window.system_prompt_tokens,
        total_tokens=window.total_tokens,
        system_prompt_truncated=window.system_prompt_truncated,
    )


def search_hit_to_proto(hit: models.SearchHit) -> pb.SearchResult:
    return pb.SearchResult(
        conversation=conversation_to_proto(hit.conversation),
        message=message_to_proto(hit.message),
        snippet=hit.snippet,
        score=hit.score,
    )


def _totals(t: models.Totals) -> pb.UsageTotals:
    return pb.UsageTotals(conversations=t.conversations, messages=t.messages, tokens=t.tokens)


def stats_to_proto(stats: models.TenantStats) -> pb.GetTenantStatsResponse:
    return pb.GetTenantStatsResponse(
        totals=_totals(stats.totals),
        by_agent=[pb.AgentStats(agent_id=a, totals=_totals(t)) for a, t in stats.by_agent.items()],
        by_day=[pb.DayStats(day=d, totals=_totals(t)) for d, t in stats.by_day.items()],
    )


def retention_policy_to_proto(days: int) -> pb.RetentionPolicy:
    return pb.RetentionPolicy(closed_retention_days=days)


def retention_days_from_proto(request: pb.UpdateRetentionPolicyRequest) -> int:
    if not request.HasField("policy"):
        raise errors.InvalidArgument.field("policy", "is required")
    return request.policy.closed_retention_days
