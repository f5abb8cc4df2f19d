"""Small servicers on the real contracts, to drive the platform through real gRPC calls."""

from __future__ import annotations

import asyncio

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as agents_grpc
from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.platform import errors
from services.platform.auth import principal
from services.platform.server import ServiceRegistration


class ProbeIdentity(pb_grpc.IdentityServiceServicer):
    """GetJwks is public; WhoAmI echoes the caller; the others fail in chosen ways."""

    async def GetJwks(self, request, context):
        raise errors.InvalidArgument(
            "two fields are wrong",
            [
                errors.FieldViolation("username", "must not be empty"),
                errors.FieldViolation("password", "is too short"),
            ],
            reason="BAD_SIGNUP",
        )

    async def WhoAmI(self, request, context):
        caller = principal()
        return pb.WhoAmIResponse(user=pb.User(id=caller.user_id, tenant_id=caller.tenant_id))

    async def GetTenant(self, request, context):
        raise RuntimeError("connection string postgresql://admin:hunter2@db/secret")

    async def ListUsers(self, request, context):
        raise errors.ResourceExhausted("slow down", retry_after=3.5)

    async def GetUser(self, request, context):
        raise errors.NotFound("user not found")


def probe_identity() -> ServiceRegistration:
    servicer = ProbeIdentity()
    return ServiceRegistration(
        name="agentmesh.identity.v1.IdentityService",
        add_to_server=lambda server: pb_grpc.add_IdentityServiceServicer_to_server(servicer, server),
        public_methods=frozenset({"/agentmesh.identity.v1.IdentityService/GetJwks"}),
    )


class SlowWatch(agents_grpc.AgentServiceServicer):
    """WatchAgents sends `count` events `interval` seconds apart, then ends."""

    def __init__(self, count: int = 10, interval: float = 0.2):
        self.count = count
        self.interval = interval
        self.started = asyncio.Event()

    async def WatchAgents(self, request, context):
        for version in range(1, self.count + 1):
            self.started.set()
            yield agents_pb.WatchAgentsResponse(event=agents_pb.AgentEvent(agent_id="a", version=version))
            await asyncio.sleep(self.interval)


def slow_watch(servicer: SlowWatch) -> ServiceRegistration:
    """WatchAgents is public here, so a server in another process needs no shared keys."""
    return ServiceRegistration(
        name="agentmesh.agents.v1.AgentService",
        add_to_server=lambda server: agents_grpc.add_AgentServiceServicer_to_server(servicer, server),
        public_methods=frozenset({"/agentmesh.agents.v1.AgentService/WatchAgents"}),
    )
