"""agentmesh.orchestration.v1.OrchestrationService."""

from __future__ import annotations

from agentmesh.orchestration.v1 import orchestration_service_pb2, orchestration_service_pb2_grpc
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration

SERVICE_NAME = orchestration_service_pb2.DESCRIPTOR.services_by_name["OrchestrationService"].full_name


async def register(runtime: Runtime) -> ServiceRegistration:
    servicer = orchestration_service_pb2_grpc.OrchestrationServiceServicer()
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            orchestration_service_pb2_grpc.add_OrchestrationServiceServicer_to_server(servicer, server)
        ),
    )
