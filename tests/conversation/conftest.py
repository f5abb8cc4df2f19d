from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import grpc
import pytest

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as pb_grpc
from tests.helpers import bearer


@dataclasses.dataclass
class Caller:
    """A stub plus a caller's token: `await c.call("GetConversation", conversation_id=...)`."""

    stub: pb_grpc.ConversationServiceStub
    token: str
    tenant: str
    user: str

    async def call(self, method: str, request: Any = None, **fields: Any) -> Any:
        if request is None:
            request = getattr(pb, f"{method}Request")(**fields)
        return await getattr(self.stub, method)(request, metadata=bearer(self.token))

    async def create(self, agent_id: str = "agent-1", **fields: Any) -> pb.Conversation:
        return (await self.call("CreateConversation", agent_id=agent_id, **fields)).conversation

    async def append(
        self,
        conversation_id: str,
        content: str,
        role: int = pb.MESSAGE_ROLE_USER,
        tool_call_id: str = "",
        **kw: Any,
    ) -> pb.AppendMessageResponse:
        message = pb.Message(role=role, content=content, tool_call_id=tool_call_id)
        return await self.call("AppendMessage", conversation_id=conversation_id, message=message, **kw)


@pytest.fixture
def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_caller(keys):
    def make(
        channel: grpc.aio.Channel, tenant: str, user: str, roles=("member",), tier: str = "pro"
    ) -> Caller:
        token = keys.token(tenant=tenant, sub=user, roles=tuple(roles), tier=tier)
        return Caller(pb_grpc.ConversationServiceStub(channel), token, tenant, user)

    return make
