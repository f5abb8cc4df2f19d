"""agentmesh.identity.v1.IdentityService."""

from __future__ import annotations

from agentmesh.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration

SERVICE_NAME = identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name


async def register(runtime: Runtime) -> ServiceRegistration:
    servicer = identity_service_pb2_grpc.IdentityServiceServicer()
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
            servicer, server
        ),
    )
