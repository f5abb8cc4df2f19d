"""Small clients for the system tests: gRPC stubs on a channel, SSE parsing, the gateway's JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as agents_grpc
from agentmesh.conversation.v1 import conversation_service_pb2 as conv_pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as conv_grpc
from agentmesh.identity.v1 import identity_service_pb2 as identity_pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as identity_grpc
from agentmesh.orchestration.v1 import orchestration_service_pb2 as orch_pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as orch_grpc

__all__ = ["agents_pb", "conv_pb", "identity_pb", "orch_pb"]
PASSWORD = "correct horse battery staple 42"


@dataclasses.dataclass
class Stubs:
    identity: identity_grpc.IdentityServiceStub
    agents: agents_grpc.AgentServiceStub
    conversation: conv_grpc.ConversationServiceStub
    orchestration: orch_grpc.OrchestrationServiceStub

    @classmethod
    def on(cls, channels: dict[str, grpc.aio.Channel]) -> Stubs:
        return cls(
            identity_grpc.IdentityServiceStub(channels["identity"]),
            agents_grpc.AgentServiceStub(channels["agents"]),
            conv_grpc.ConversationServiceStub(channels["conversation"]),
            orch_grpc.OrchestrationServiceStub(channels["orchestration"]),
        )


async def sign_up(identity: identity_grpc.IdentityServiceStub, tenant: str) -> identity_pb.SignUpResponse:
    return await identity.SignUp(
        identity_pb.SignUpRequest(tenant_name=tenant, username="owner", password=PASSWORD), timeout=20
    )


def echo_agent(name: str = "Echo") -> agents_pb.Agent:
    return agents_pb.Agent(
        display_name=name, config=agents_pb.AgentConfig(model="echo:default", system_prompt="Be brief.")
    )


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str | None, Any]]:
    """(id, event, data) of each SSE event of a streaming response."""
    event_id = event = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event_id, event, json.loads("\n".join(data))
            event_id = event = None
            data = []
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
