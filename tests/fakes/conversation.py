"""Fakes of the conversation service: in-memory implementations of services.conversation.service's
Store, HotWindow and SearchIndex protocols (the rules run without PostgreSQL or Redis), and
`FakeConversation`, an in-memory ConversationService over gRPC with just the calls orchestration
makes (served by a real grpc.aio server, so its clients talk to it over real channels)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as cpb_grpc
from services.conversation.models import (
    ACTIVE,
    CLOSED,
    Appended,
    AppendRefused,
    Conversation,
    Message,
    NewMessage,
    SearchHit,
    Siblings,
    TenantStats,
    Totals,
    new_id,
)
from services.platform import errors
from services.platform.auth import principal


class FakeStore:
    """The conversation store in dicts, with ConversationStore's scoping, numbering and replays."""

    def __init__(self) -> None:
        self.conversations: dict[str, Conversation] = {}
        self.conversation_requests: dict[tuple[str, str, str], str] = {}  # (tenant, user, request id)
        self.messages: dict[str, list[Message]] = {}
        self.message_requests: dict[tuple[str, str], Message] = {}  # (conversation, request id)
        self.retention: dict[str, int] = {}

    def _visible(self, tenant_id: str, only_user: str | None, conversation_id: str) -> Conversation | None:
        c = self.conversations.get(conversation_id)
        if c is None or c.tenant_id != tenant_id or (only_user is not None and c.user_id != only_user):
            return None
        return c

    async def create_conversation(self, conversation: Conversation, *, request_id: str) -> Conversation:
        key = (conversation.tenant_id, conversation.user_id, request_id)
        if request_id and key in self.conversation_requests:
            return self.conversations[self.conversation_requests[key]]
        self.conversations[conversation.id] = conversation
        self.messages[conversation.id] = []
        if request_id:
            self.conversation_requests[key] = conversation.id
        return conversation

    async def get_conversation(
        self, tenant_id: str, only_user: str | None, conversation_id: str
    ) -> Conversation | None:
        return self._visible(tenant_id, only_user, conversation_id)

    async def list_conversations(
        self,
        tenant_id: str,
        only_user: str | None,
        *,
        agent_id: str,
        user_id: str,
        status: str,
        start_time: int,
        end_time: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[Conversation]:
        found = [
            c
            for c in self.conversations.values()
            if self._visible(tenant_id, only_user, c.id)
            and (not agent_id or c.agent_id == agent_id)
            and (not user_id or c.user_id == user_id)
            and (not status or c.status == status)
            and (not start_time or c.create_time >= start_time)
            and (not end_time or c.create_time < end_time)
            and (after is None or (c.create_time, c.id) < after)
        ]
        return sorted(found, key=lambda c: (c.create_time, c.id), reverse=True)[:limit]

    async def close_conversation(
        self, tenant_id: str, only_user: str | None, conversation_id: str, *, now: int
    ) -> Conversation | None:
        c = self._visible(tenant_id, only_user, conversation_id)
        if c is not None and c.status == ACTIVE:
            c = self.conversations[c.id] = dataclasses.replace(
                c, status=CLOSED, close_time=now, update_time=now
            )
        return c

    async def update_conversation(
        self, tenant_id: str, only_user: str | None, conversation_id: str, values: dict[str, Any], *, now: int
    ) -> Conversation | None:
        c = self._visible(tenant_id, only_user, conversation_id)
        if c is not None:
            c = self.conversations[c.id] = dataclasses.replace(c, **values, update_time=now)
        return c

    async def delete_conversations(self, conversation_ids: Sequence[str]) -> int:
        gone = [cid for cid in conversation_ids if self.conversations.pop(cid, None) is not None]
        for cid in conversation_ids:
            self.messages.pop(cid, None)
        return len(gone)

    async def append_message(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        new: NewMessage,
        *,
        token_count: int,
        request_id: str,
        now: int,
    ) -> Appended | AppendRefused:
        c = self._visible(tenant_id, only_user, conversation_id)
        if c is None:
            return AppendRefused.MISSING
        replay = self.message_requests.get((conversation_id, request_id)) if request_id else None
        if replay is not None:
            return Appended(replay, c, replayed=True)
        if c.status != ACTIVE:
            return AppendRefused.CLOSED
        message_id, parent_id = new_id(), c.active_leaf_id
        c = self.conversations[c.id] = dataclasses.replace(
            c,
            message_count=c.message_count + 1,
            token_count=c.token_count + token_count,
            update_time=now,
            last_message_time=now,
            path_length=c.path_length + 1,
            active_leaf_id=message_id,
        )
        # One path only: the fake keeps no branches (the real store's are tested on PostgreSQL and SQLite).
        message = Message(
            id=message_id,
            parent_id=parent_id,
            conversation_id=conversation_id,
            sequence=c.path_length,
            role=new.role,
            content=new.content,
            token_count=token_count,
            metadata=dict(new.metadata),
            tool_call_id=new.tool_call_id,
            create_time=now,
            tool_calls=new.tool_calls,
        )
        self.messages[conversation_id].append(message)
        if request_id:
            self.message_requests[(conversation_id, request_id)] = message
        return Appended(message, c, replayed=False)

    async def messages_before(self, conversation_id: str, before: int, *, limit: int) -> list[Message]:
        older = [m for m in self.messages.get(conversation_id, []) if m.sequence < before]
        return sorted(older, key=lambda m: m.sequence, reverse=True)[:limit]

    async def list_messages(
        self, conversation_id: str, *, after: int, before: int, descending: bool, limit: int
    ) -> list[Message]:
        found = [
            m
            for m in self.messages.get(conversation_id, [])
            if (not after or m.sequence > after) and (not before or m.sequence < before)
        ]
        return sorted(found, key=lambda m: m.sequence, reverse=descending)[:limit]

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        return next((m for m in self.messages.get(conversation_id, []) if m.id == message_id), None)

    async def siblings(self, conversation_id: str, parent_ids: Sequence[str]) -> dict[str, Siblings]:
        found: dict[str, list[str]] = {}
        for m in self.messages.get(conversation_id, []):
            if m.parent_id in parent_ids:
                found.setdefault(m.parent_id, []).append(m.id)
        return {parent: Siblings(tuple(ids)) for parent, ids in found.items()}

    async def path_through(self, conversation_id: str, message_id: str) -> list[Message] | None:
        path = self.messages.get(conversation_id, [])
        return list(path) if any(m.id == message_id for m in path) else None

    async def get_retention_days(self, tenant_id: str) -> int:
        return self.retention.get(tenant_id, 0)

    async def set_retention_days(self, tenant_id: str, days: int, *, now: int) -> None:
        self.retention[tenant_id] = days


class FakeHotWindow:
    """The hot window in a dict; `down` makes every read report "nothing usable", as HotWindow does
    when Redis fails."""

    def __init__(self, *, size: int = 256) -> None:
        self._size = size
        self.windows: dict[str, dict[int, Message]] = {}
        self.down = False

    @property
    def size(self) -> int:
        return self._size

    async def append(self, message: Message) -> None:
        window = self.windows.get(message.conversation_id)
        if window is not None and not self.down:
            window[message.sequence] = message
            self._trim(window)

    async def read(self, conversation_id: str, *, max_sequence: int, count: int) -> list[Message] | None:
        if self.down:
            return None
        window = self.windows.get(conversation_id, {})
        return [window[s] for s in sorted(window, reverse=True) if s <= max_sequence][:count]

    async def fill(self, conversation_id: str, messages: Sequence[Message]) -> None:
        if messages and not self.down:
            window = self.windows.setdefault(conversation_id, {})
            window.update({m.sequence: m for m in messages})
            self._trim(window)

    async def drop(self, *conversation_ids: str) -> None:
        for cid in conversation_ids:
            self.windows.pop(cid, None)

    def _trim(self, window: dict[int, Message]) -> None:
        for s in sorted(window)[: -self._size]:
            del window[s]


class FakeSearchIndex:
    """No hits and empty statistics; records the scope each call was given."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, str | None]] = []

    async def search(
        self,
        tenant_id: str,
        only_user: str | None,
        query: str,
        *,
        agent_id: str,
        after: list[Any] | None,
        limit: int,
    ) -> list[tuple[SearchHit, list[Any]]]:
        self.scopes.append((tenant_id, only_user))
        return []

    async def stats(
        self, tenant_id: str, only_user: str | None, *, start_time: int, end_time: int
    ) -> TenantStats:
        self.scopes.append((tenant_id, only_user))
        return TenantStats(totals=Totals(), by_agent={}, by_day={})


@dataclasses.dataclass
class FakeConversationData:
    tenant: str
    user: str
    agent_id: str
    agent_version: int
    closed: bool = False
    messages: list[cpb.Message] = dataclasses.field(default_factory=list)


class FakeConversation(cpb_grpc.ConversationServiceServicer):
    def __init__(self) -> None:
        self.conversations: dict[str, FakeConversationData] = {}
        self.by_request: dict[str, cpb.Message] = {}
        self.calls: list[tuple[str, str, str]] = []  # (method, tenant, user) of the token seen
        self.quota = cpb.Quota()
        self.quota_checks = 0

    def _get(self, conversation_id: str) -> FakeConversationData:
        p = principal()
        conv = self.conversations.get(conversation_id)
        if conv is None or conv.tenant != p.tenant_id:
            raise errors.NotFound("conversation not found")
        return conv

    def _record(self, method: str) -> None:
        p = principal()
        self.calls.append((method, p.tenant_id, p.user_id))

    async def CreateConversation(self, request, context):  # type: ignore[no-untyped-def]
        self._record("CreateConversation")
        p = principal()
        conversation_id = uuid.uuid4().hex
        self.conversations[conversation_id] = FakeConversationData(
            p.tenant_id, p.user_id, request.agent_id, request.agent_version
        )
        return cpb.CreateConversationResponse(
            conversation=cpb.Conversation(id=conversation_id, tenant_id=p.tenant_id)
        )

    async def CloseConversation(self, request, context):  # type: ignore[no-untyped-def]
        self._record("CloseConversation")
        conv = self._get(request.conversation_id)
        conv.closed = True
        return cpb.CloseConversationResponse(conversation=cpb.Conversation(id=request.conversation_id))

    async def AppendMessage(self, request, context):  # type: ignore[no-untyped-def]
        self._record("AppendMessage")
        conv = self._get(request.conversation_id)
        if conv.closed:
            raise errors.FailedPrecondition("conversation is closed")
        if not request.message.content and not request.message.tool_calls:
            raise errors.InvalidArgument.field("message.content", "must not be empty")
        key = f"{request.conversation_id}/{request.request_id}"
        if request.request_id and key in self.by_request:
            return cpb.AppendMessageResponse(message=self.by_request[key])
        message = cpb.Message()
        message.CopyFrom(request.message)
        message.id = uuid.uuid4().hex
        message.conversation_id = request.conversation_id
        message.sequence = len(conv.messages) + 1
        conv.messages.append(message)
        if request.request_id:
            self.by_request[key] = message
        return cpb.AppendMessageResponse(message=message)

    async def CheckQuota(self, request, context):  # type: ignore[no-untyped-def]
        # Unlimited unless a test sets `quota`; counted apart from `calls` (run admission asks).
        self.quota_checks += 1
        return cpb.CheckQuotaResponse(quota=self.quota)

    async def GetContext(self, request, context):  # type: ignore[no-untyped-def]
        self._record("GetContext")
        conv = self._get(request.conversation_id)
        if request.token_budget <= 0:
            raise errors.InvalidArgument.field("token_budget", "must be positive")
        system = cpb.Message(role=cpb.MESSAGE_ROLE_SYSTEM, content=request.system_prompt, sequence=0)
        return cpb.GetContextResponse(messages=[system, *conv.messages], token_budget=request.token_budget)

    async def ListMessages(self, request, context):  # type: ignore[no-untyped-def]
        self._record("ListMessages")
        conv = self._get(request.conversation_id)
        return cpb.ListMessagesResponse(messages=conv.messages)
