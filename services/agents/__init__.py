"""agentmesh.agents.v1.AgentService."""

from __future__ import annotations

from agentmesh.agents.v1 import agents_service_pb2, agents_service_pb2_grpc
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration

SERVICE_NAME = agents_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


async def register(runtime: Runtime) -> ServiceRegistration:
    servicer = agents_service_pb2_grpc.AgentServiceServicer()
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: agents_service_pb2_grpc.add_AgentServiceServicer_to_server(
            servicer, server
        ),
    )
