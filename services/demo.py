"""The embedded mode's demo agent, created through the public API like any client would.

Identity seeds the demo tenant and users itself (services/identity/demo.py); the agent belongs to
the agents service, so `agentmesh up` signs in as user_1 and creates it with a fixed request_id,
which makes every later start a no-op.
"""

from __future__ import annotations

import logging

import grpc

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as agents_grpc
from agentmesh.identity.v1 import identity_service_pb2 as identity_pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as identity_grpc

log = logging.getLogger("agentmesh.demo")

DEMO_AGENT_REQUEST_ID = "agentmesh-demo-agent-v1"


async def ensure_demo_agent(address: str) -> str:
    """Creates (once) the demo tenant's agent; returns its id."""
    async with grpc.aio.insecure_channel(address) as channel:
        login = await identity_grpc.IdentityServiceStub(channel).Login(
            identity_pb.LoginRequest(tenant="demo", username="user_1", password="1234"), timeout=30
        )
        metadata = (("authorization", f"Bearer {login.tokens.access_token}"),)
        created = await agents_grpc.AgentServiceStub(channel).CreateAgent(
            agents_pb.CreateAgentRequest(
                agent=agents_pb.Agent(
                    display_name="Echo assistant",
                    description="The demo agent: answers with your own words, token by token.",
                    config=agents_pb.AgentConfig(
                        model="echo:default", system_prompt="You are a helpful assistant."
                    ),
                ),
                template_id="builtin-assistant",
                request_id=DEMO_AGENT_REQUEST_ID,
            ),
            metadata=metadata,
            timeout=30,
        )
    return created.agent.id


async def seed_demo_agent(address: str) -> None:
    """`ensure_demo_agent` for start-up: a failure is logged, never fatal."""
    try:
        agent_id = await ensure_demo_agent(address)
        log.info("demo agent ready", extra={"fields": {"agent_id": agent_id}})
    except grpc.aio.AioRpcError as err:
        log.warning("could not create the demo agent", extra={"fields": {"error": err.details()}})
