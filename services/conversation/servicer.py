"""gRPC transport for ConversationService: proto in, domain call, proto out. No SQL, no rules."""

from __future__ import annotations

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as pb_grpc
from services.conversation import models
from services.conversation.service import ConversationService
from services.platform import errors
from services.platform.middleware import principal
from services.platform.timestamps import from_timestamp, to_timestamp

_ROLE_TO_PB = {
    "system": pb.MESSAGE_ROLE_SYSTEM,
    "user": pb.MESSAGE_ROLE_USER,
    "assistant": pb.MESSAGE_ROLE_ASSISTANT,
    "tool": pb.MESSAGE_ROLE_TOOL,
}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}
_STATUS_TO_PB = {models.ACTIVE: pb.CONVERSATION_STATUS_ACTIVE, models.CLOSED: pb.CONVERSATION_STATUS_CLOSED}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


def conversation_pb(c: models.Conversation) -> pb.Conversation:
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
    )


def message_pb(m: models.Message) -> pb.Message:
    return pb.Message(
        id=m.id,
        conversation_id=m.conversation_id,
        sequence=m.sequence,
        role=_ROLE_TO_PB.get(m.role, pb.MESSAGE_ROLE_UNSPECIFIED),
        content=m.content,
        token_count=m.token_count,
        metadata=m.metadata,
        tool_call_id=m.tool_call_id,
        create_time=to_timestamp(m.create_time),
    )


def _status(value: int) -> str:
    if value == pb.CONVERSATION_STATUS_UNSPECIFIED:
        return ""
    if value not in _STATUS_FROM_PB:
        raise errors.InvalidArgument.field("status", "is not a known conversation status")
    return _STATUS_FROM_PB[value]


class ConversationServicer(pb_grpc.ConversationServiceServicer):
    def __init__(self, *, service: ConversationService):
        self.service = service

    async def CreateConversation(self, request, context):  # type: ignore[no-untyped-def]
        conversation = await self.service.create_conversation(
            principal(),
            agent_id=request.agent_id,
            agent_version=request.agent_version,
            title=request.title,
            metadata=dict(request.metadata),
            request_id=request.request_id,
        )
        return pb.CreateConversationResponse(conversation=conversation_pb(conversation))

    async def GetConversation(self, request, context):  # type: ignore[no-untyped-def]
        conversation = await self.service.get_conversation(principal(), request.conversation_id)
        return pb.GetConversationResponse(conversation=conversation_pb(conversation))

    async def ListConversations(self, request, context):  # type: ignore[no-untyped-def]
        page = await self.service.list_conversations(
            principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            agent_id=request.agent_id,
            user_id=request.user_id,
            status=_status(request.status),
            start_time=from_timestamp(request, "start_time"),
            end_time=from_timestamp(request, "end_time"),
        )
        return pb.ListConversationsResponse(
            conversations=[conversation_pb(c) for c in page.items], next_page_token=page.next_page_token
        )

    async def CloseConversation(self, request, context):  # type: ignore[no-untyped-def]
        conversation = await self.service.close_conversation(principal(), request.conversation_id)
        return pb.CloseConversationResponse(conversation=conversation_pb(conversation))

    async def DeleteConversation(self, request, context):  # type: ignore[no-untyped-def]
        await self.service.delete_conversation(principal(), request.conversation_id)
        return pb.DeleteConversationResponse()

    async def AppendMessage(self, request, context):  # type: ignore[no-untyped-def]
        m = request.message
        new = models.NewMessage(
            role=_ROLE_FROM_PB.get(m.role, ""),
            content=m.content,
            metadata=dict(m.metadata),
            tool_call_id=m.tool_call_id,
        )
        message, conversation = await self.service.append_message(
            principal(), request.conversation_id, new, request_id=request.request_id
        )
        return pb.AppendMessageResponse(
            message=message_pb(message), conversation=conversation_pb(conversation)
        )

    async def ListMessages(self, request, context):  # type: ignore[no-untyped-def]
        if request.order not in (
            pb.SORT_ORDER_UNSPECIFIED,
            pb.SORT_ORDER_ASCENDING,
            pb.SORT_ORDER_DESCENDING,
        ):
            raise errors.InvalidArgument.field("order", "is not a known sort order")
        page = await self.service.list_messages(
            principal(),
            request.conversation_id,
            page_size=request.page_size,
            page_token=request.page_token,
            before_sequence=request.before_sequence,
            after_sequence=request.after_sequence,
            descending=request.order == pb.SORT_ORDER_DESCENDING,
        )
        return pb.ListMessagesResponse(
            messages=[message_pb(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def GetContext(self, request, context):  # type: ignore[no-untyped-def]
        window = await self.service.get_context(
            principal(),
            request.conversation_id,
            token_budget=request.token_budget,
            system_prompt=request.system_prompt,
        )
        return pb.GetContextResponse(
            messages=[message_pb(m) for m in window.messages],
            kept=[pb.SequenceRange(first=r.first, last=r.last) for r in window.kept],
            dropped=[pb.SequenceRange(first=r.first, last=r.last) for r in window.dropped],
            token_budget=window.token_budget,
            system_prompt_tokens=window.system_prompt_tokens,
            total_tokens=window.total_tokens,
            system_prompt_truncated=window.system_prompt_truncated,
        )

    async def SearchConversations(self, request, context):  # type: ignore[no-untyped-def]
        page = await self.service.search(
            principal(),
            request.query,
            page_size=request.page_size,
            page_token=request.page_token,
            agent_id=request.agent_id,
        )
        return pb.SearchConversationsResponse(
            results=[
                pb.SearchResult(
                    conversation=conversation_pb(h.conversation),
                    message=message_pb(h.message),
                    snippet=h.snippet,
                    score=h.score,
                )
                for h in page.items
            ],
            next_page_token=page.next_page_token,
        )

    async def GetTenantStats(self, request, context):  # type: ignore[no-untyped-def]
        stats = await self.service.tenant_stats(
            principal(),
            start_time=from_timestamp(request, "start_time"),
            end_time=from_timestamp(request, "end_time"),
        )

        def totals(t: models.Totals) -> pb.UsageTotals:
            return pb.UsageTotals(conversations=t.conversations, messages=t.messages, tokens=t.tokens)

        return pb.GetTenantStatsResponse(
            totals=totals(stats.totals),
            by_agent=[pb.AgentStats(agent_id=a, totals=totals(t)) for a, t in stats.by_agent.items()],
            by_day=[pb.DayStats(day=d, totals=totals(t)) for d, t in stats.by_day.items()],
        )

    async def GetRetentionPolicy(self, request, context):  # type: ignore[no-untyped-def]
        days = await self.service.get_retention_policy(principal())
        return pb.GetRetentionPolicyResponse(policy=pb.RetentionPolicy(closed_retention_days=days))

    async def UpdateRetentionPolicy(self, request, context):  # type: ignore[no-untyped-def]
        if not request.HasField("policy"):
            raise errors.InvalidArgument.field("policy", "is required")
        days = await self.service.update_retention_policy(principal(), request.policy.closed_retention_days)
        return pb.UpdateRetentionPolicyResponse(policy=pb.RetentionPolicy(closed_retention_days=days))
