"""Calls orchestration makes to its peers (agents, conversation, identity), through the generated
stubs over the runtime's peer channels and `peers.call`, the one peer-call boundary (a failure comes
back as the exception its server raised).

Every call passes the acting user's token explicitly and an explicit timeout: runs execute in
background tasks, outside the call that started them, where the channel has no call to forward.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf import field_mask_pb2

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as agents_grpc
from agentmesh.conversation.v1 import conversation_service_pb2 as conv_pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as conv_grpc
from agentmesh.identity.v1 import identity_service_pb2 as identity_pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as identity_grpc
from services.orchestration.convert import (
    Role,
    agent_from_proto,
    context_from_proto,
    message_usage_to_proto,
    quota_from_proto,
    role_from_proto,
    role_to_proto,
)
from services.orchestration.models import AgentSnapshot, QuotaState, StoredMessage, Usage
from services.orchestration.providers import ChatMessage, ToolCall
from services.platform import errors, peers


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class AgentsClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float):
        self._stub = agents_grpc.AgentServiceStub(channel)
        self._timeout = timeout

    async def get_agent(self, agent_id: str, *, token: str, tenant_id: str) -> AgentSnapshot:
        reply = await peers.call(
            self._stub.GetAgent,
            agents_pb.GetAgentRequest(agent_id=agent_id),
            metadata=auth(token),
            timeout=self._timeout,
        )
        return agent_from_proto(reply.agent, tenant_id)

    def watch(self, *, token: str, timeout: float) -> AsyncIterator[agents_pb.AgentEvent | None]:
        """WatchAgents(all_tenants=true) with a service token; ends (or raises) when the stream does.

        Yields None first, once the server has sent its headers (the subscription is live).
        """

        async def events() -> AsyncIterator[agents_pb.AgentEvent | None]:
            call = peers.call(
                self._stub.WatchAgents,
                agents_pb.WatchAgentsRequest(all_tenants=True),
                metadata=auth(token),
                timeout=timeout,
            )
            try:
                await call.initial_metadata()
                yield None
                async for reply in call:
                    yield reply.event
            finally:
                call.cancel()

        return events()


class ConversationClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float):
        self._stub = conv_grpc.ConversationServiceStub(channel)
        self._timeout = timeout

    async def create(
        self, *, agent_id: str, agent_version: int, title: str, request_id: str, token: str
    ) -> str:
        reply = await peers.call(
            self._stub.CreateConversation,
            conv_pb.CreateConversationRequest(
                agent_id=agent_id, agent_version=agent_version, title=title, request_id=request_id
            ),
            metadata=auth(token),
            timeout=self._timeout,
        )
        return reply.conversation.id

    async def close(self, conversation_id: str, *, token: str) -> None:
        try:
            await peers.call(
                self._stub.CloseConversation,
                conv_pb.CloseConversationRequest(conversation_id=conversation_id),
                metadata=auth(token),
                timeout=self._timeout,
            )
        except errors.FailedPrecondition:
            pass  # already closed

    async def rename(self, conversation_id: str, title: str, *, token: str) -> None:
        conversation = conv_pb.Conversation(id=conversation_id, title=title)
        await peers.call(
            self._stub.UpdateConversation,
            conv_pb.UpdateConversationRequest(
                conversation=conversation, update_mask=field_mask_pb2.FieldMask(paths=["title"])
            ),
            metadata=auth(token),
            timeout=self._timeout,
        )

    async def delete(self, conversation_id: str, *, token: str) -> None:
        await peers.call(
            self._stub.DeleteConversation,
            conv_pb.DeleteConversationRequest(conversation_id=conversation_id),
            metadata=auth(token),
            timeout=self._timeout,
        )

    async def get_message(self, conversation_id: str, message_id: str, *, token: str) -> StoredMessage:
        reply = await peers.call(
            self._stub.GetMessage,
            conv_pb.GetMessageRequest(conversation_id=conversation_id, message_id=message_id),
            metadata=auth(token),
            timeout=self._timeout,
        )
        m = reply.message
        return StoredMessage(
            id=m.id,
            role=role_from_proto(m.role),
            content=m.content,
            parent_id=m.parent_id,
            metadata=dict(m.metadata),
        )

    async def edit(
        self,
        conversation_id: str,
        message_id: str,
        *,
        content: str,
        metadata: dict[str, str],
        request_id: str,
        token: str,
    ) -> str:
        """Stores a new version of a user message (the active leaf now); its id."""
        reply = await peers.call(
            self._stub.EditMessage,
            conv_pb.EditMessageRequest(
                conversation_id=conversation_id,
                message_id=message_id,
                content=content,
                metadata=metadata,
                request_id=request_id,
            ),
            metadata=auth(token),
            timeout=self._timeout,
        )
        return reply.message.id

    async def switch(self, conversation_id: str, message_id: str, *, exact: bool, token: str) -> str:
        """Makes the branch through a message active; the new active leaf's id."""
        reply = await peers.call(
            self._stub.SwitchBranch,
            conv_pb.SwitchBranchRequest(conversation_id=conversation_id, message_id=message_id, exact=exact),
            metadata=auth(token),
            timeout=self._timeout,
        )
        return reply.conversation.active_message_id

    async def append(
        self,
        conversation_id: str,
        *,
        role: Role,
        content: str,
        metadata: dict[str, str],
        request_id: str,
        token: str,
        usage: Usage | None = None,
        run_id: str = "",
        tool_calls: Sequence[ToolCall] = (),
        tool_call_id: str = "",
    ) -> str:
        """Stores a message; an assistant answer carries its usage (conversation prices and counts it)."""
        message = conv_pb.Message(role=role_to_proto(role), content=content, metadata=metadata)
        if usage is not None:
            message.usage.CopyFrom(message_usage_to_proto(usage, run_id))
        # An assistant message with the calls it makes; a tool message with the call it answers.
        message.tool_calls.extend(
            conv_pb.ToolCallRef(id=c.id, name=c.name, arguments_json=c.arguments_json) for c in tool_calls
        )
        message.tool_call_id = tool_call_id
        reply = await peers.call(
            self._stub.AppendMessage,
            conv_pb.AppendMessageRequest(
                conversation_id=conversation_id, message=message, request_id=request_id
            ),
            metadata=auth(token),
            timeout=self._timeout,
        )
        return reply.message.id

    async def context(
        self, conversation_id: str, *, token_budget: int, system_prompt: str, token: str
    ) -> list[ChatMessage]:
        reply = await peers.call(
            self._stub.GetContext,
            conv_pb.GetContextRequest(
                conversation_id=conversation_id, token_budget=token_budget, system_prompt=system_prompt
            ),
            metadata=auth(token),
            timeout=self._timeout,
        )
        return context_from_proto(list(reply.messages))

    async def check_quota(self, *, token: str) -> QuotaState:
        """The tenant's monthly quota; RESOURCE_EXHAUSTED (QuotaFailure, reset time) when used up."""
        reply = await peers.call(
            self._stub.CheckQuota, conv_pb.CheckQuotaRequest(), metadata=auth(token), timeout=self._timeout
        )
        return quota_from_proto(reply.quota)


class ServiceTokens:
    """A service token (role "service", tenant "*") from identity's IssueServiceToken, cached until
    shortly before it expires."""

    def __init__(self, channel: grpc.aio.Channel, *, service_name: str, secret: str, timeout: float):
        self._stub = identity_grpc.IdentityServiceStub(channel)
        self._name = service_name
        self._secret = secret
        self._timeout = timeout
        self._token = ""
        self._valid_until = 0.0

    async def __call__(self) -> str:
        if self._token and time.monotonic() < self._valid_until:
            return self._token
        reply = await peers.call(
            self._stub.IssueServiceToken,
            identity_pb.IssueServiceTokenRequest(service_name=self._name, secret=self._secret),
            timeout=self._timeout,
        )
        lifetime = reply.tokens.access_token_lifetime.ToTimedelta().total_seconds() or 300
        self._token = reply.tokens.access_token
        self._valid_until = time.monotonic() + lifetime * 0.8
        return self._token
