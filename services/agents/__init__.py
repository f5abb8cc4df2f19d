"""agentmesh.agents.v1.AgentService: versioned agent configs, templates, tier validation, change stream."""

from __future__ import annotations

from agentmesh.agents.v1 import agents_service_pb2, agents_service_pb2_grpc
from services.agents.cache import CachedStore
from services.agents.events import EventBus
from services.agents.service import AgentService
from services.agents.servicer import AgentServicer
from services.agents.store import AgentStore
from services.platform.runtime import Runtime
from services.platform.server import Built, ServiceRegistration

SERVICE_NAME = agents_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


async def build(runtime: Runtime) -> Built[AgentService]:
    events = EventBus(redis=runtime.redis)
    store = CachedStore(AgentStore(engine=runtime.engine), events)
    service = AgentService(
        store=store,
        events=events,
        page_tokens=runtime.page_tokens,
        clock=runtime.clock,
        tool_hosts=runtime.settings.tools,
    )
    servicer = AgentServicer(service=service)
    return Built(
        service=service,
        registration=ServiceRegistration(
            name=SERVICE_NAME,
            add_to_server=lambda server: agents_service_pb2_grpc.add_AgentServiceServicer_to_server(
                servicer, server
            ),
            # WatchAgents streams never end by themselves: end them as soon as draining starts.
            on_drain=[events.close],
            background=[store.follow_events],
        ),
    )
