"""agentmesh.conversation.v1.ConversationService."""

from __future__ import annotations

from agentmesh.conversation.v1 import conversation_service_pb2, conversation_service_pb2_grpc
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration

SERVICE_NAME = conversation_service_pb2.DESCRIPTOR.services_by_name["ConversationService"].full_name


async def register(runtime: Runtime) -> ServiceRegistration:
    servicer = conversation_service_pb2_grpc.ConversationServiceServicer()
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: conversation_service_pb2_grpc.add_ConversationServiceServicer_to_server(
            servicer, server
        ),
    )
