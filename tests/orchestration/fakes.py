"""In-memory AgentService (and, from tests/fakes/conversation.py, ConversationService) with just the
calls orchestration makes, served by real grpc.aio servers (the serve fixture), so orchestration talks
to them over real channels."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from agentmesh.agents.v1 import agents_service_pb2 as apb
from agentmesh.agents.v1 import agents_service_pb2_grpc as apb_grpc
from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as cpb_grpc
from services.platform import errors
from services.platform.auth import principal
from services.platform.server import ServiceRegistration
from tests.fakes.conversation import FakeConversation


class FakeAgents(apb_grpc.AgentServiceServicer):
    def __init__(self) -> None:
        self.agents: dict[str, tuple[str, apb.Agent]] = {}
        self.watchers: list[asyncio.Queue[apb.AgentEvent]] = []
        self.watching = asyncio.Event()
        self.calls: list[tuple[str, str]] = []  # (method, tenant of the token)

    def add(self, tenant: str, *, model: str = "echo:default", active: bool = True, **config: object) -> str:
        agent_id = uuid.uuid4().hex
        agent = apb.Agent(
            id=agent_id,
            display_name="test agent",
            state=apb.AGENT_STATE_ACTIVE if active else apb.AGENT_STATE_INACTIVE,
            config=apb.AgentConfig(model=model, **config),  # type: ignore[arg-type]
            version=1,
        )
        self.agents[agent_id] = (tenant, agent)
        return agent_id

    def update(self, agent_id: str, **config: object) -> int:
        """A new version with the given config fields; published to every watcher."""
        tenant, agent = self.agents[agent_id]
        new = apb.Agent()
        new.CopyFrom(agent)
        for key, value in config.items():
            setattr(new.config, key, value)
        new.version = agent.version + 1
        self.agents[agent_id] = (tenant, new)
        event = apb.AgentEvent(
            change_type=apb.CHANGE_TYPE_UPDATED,
            tenant_id=tenant,
            agent_id=agent_id,
            version=new.version,
            agent=new,
        )
        for queue in self.watchers:
            queue.put_nowait(event)
        return new.version

    async def GetAgent(self, request, context):  # type: ignore[no-untyped-def]
        p = principal()
        self.calls.append(("GetAgent", p.tenant_id))
        found = self.agents.get(request.agent_id)
        if found is None or found[0] != p.tenant_id:
            raise errors.NotFound(f"agent {request.agent_id} not found")
        return apb.GetAgentResponse(agent=found[1])

    async def WatchAgents(self, request, context):  # type: ignore[no-untyped-def]
        p = principal()
        if not (request.all_tenants and p.is_service and p.tenant_id == "*"):
            raise errors.PermissionDenied("all_tenants needs a service token")
        queue: asyncio.Queue[apb.AgentEvent] = asyncio.Queue()
        self.watchers.append(queue)
        await context.send_initial_metadata(())
        self.watching.set()
        try:
            while True:
                yield apb.WatchAgentsResponse(event=await queue.get())
        finally:
            self.watchers.remove(queue)


def registrations(agents: FakeAgents, conversation: FakeConversation) -> list[ServiceRegistration]:
    return [
        ServiceRegistration(
            name=apb.DESCRIPTOR.services_by_name["AgentService"].full_name,
            add_to_server=lambda server: apb_grpc.add_AgentServiceServicer_to_server(agents, server),
        ),
        ServiceRegistration(
            name=cpb.DESCRIPTOR.services_by_name["ConversationService"].full_name,
            add_to_server=lambda server: cpb_grpc.add_ConversationServiceServicer_to_server(
                conversation, server
            ),
        ),
    ]


def assistant_messages(conversation: FakeConversation) -> list[cpb.Message]:
    return [
        m
        for c in conversation.conversations.values()
        for m in c.messages
        if m.role == cpb.MESSAGE_ROLE_ASSISTANT
    ]


__all__ = ["FakeAgents", "FakeConversation", "assistant_messages", "grpc", "registrations"]
