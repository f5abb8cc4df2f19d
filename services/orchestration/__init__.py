"""agentmesh.orchestration.v1.OrchestrationService: sessions, streaming runs, resume and cancel."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from agentmesh.orchestration.v1 import orchestration_service_pb2, orchestration_service_pb2_grpc
from services.orchestration import providers as providers_module
from services.orchestration.agent_cache import AgentCache
from services.orchestration.clients import AgentsClient, ConversationClient, ServiceTokens
from services.orchestration.config import OrchestrationOptions
from services.orchestration.events import RunEvents
from services.orchestration.limits import RunLimits
from services.orchestration.providers import Providers
from services.orchestration.runs import RunManager
from services.orchestration.service import OrchestrationService
from services.orchestration.servicer import OrchestrationServicer
from services.orchestration.store import OrchestrationStore
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration

SERVICE_NAME = orchestration_service_pb2.DESCRIPTOR.services_by_name["OrchestrationService"].full_name


@dataclasses.dataclass
class Orchestration:
    """Everything `build` wires together (tests and the benchmark reach into it)."""

    service: OrchestrationService
    runs: RunManager
    agents: AgentCache
    registration: ServiceRegistration
    close: Callable[[], Awaitable[None]]


def build(
    runtime: Runtime,
    *,
    options: OrchestrationOptions | None = None,
    providers: Providers | None = None,
    service_token: Callable[[], Awaitable[str]] | None = None,
    clock: Callable[[], float] = time.time,
    close_on_stop: bool = True,
) -> Orchestration:
    """Wires the service. With close_on_stop=False the caller calls `close()` itself (tests: after
    the stopped server's cancelled handlers have released their Redis connections)."""
    settings = runtime.settings
    options = options or OrchestrationOptions.from_settings(settings.runs)
    providers = providers or providers_module.from_settings(settings)
    if service_token is None:
        service_token = ServiceTokens(
            runtime.peers.channel(settings.peers.identity),
            service_name="orchestration",
            secret=settings.auth.service_secret,
            timeout=options.peer_timeout_seconds,
        )
    store = OrchestrationStore(runtime.engine)
    reader = None
    if settings.redis_url:
        reader = aioredis.from_url(
            settings.redis_url,
            decode_responses=False,
            socket_connect_timeout=2,
            socket_timeout=5,
            max_connections=options.max_stream_readers,
        )
    events = RunEvents(
        reader or runtime.redis,
        block_ms=options.read_block_ms,
        retention_seconds=options.event_retention_seconds,
        reader=reader,
    )
    limits = RunLimits(reader or runtime.redis, slot_ttl_seconds=options.lease_ttl_seconds, clock=clock)
    agents = AgentCache(
        AgentsClient(runtime.peers.channel(settings.peers.agents), timeout=options.peer_timeout_seconds),
        service_token=service_token,
        max_size=options.agent_cache_size,
        backoff_initial=options.watch_backoff_initial_seconds,
        backoff_max=options.watch_backoff_max_seconds,
        stream_seconds=options.watch_stream_seconds,
    )
    conversation = ConversationClient(
        runtime.peers.channel(settings.peers.conversation), timeout=options.peer_timeout_seconds
    )
    runs = RunManager(
        store=store,
        events=events,
        limits=limits,
        agents=agents,
        conversation=conversation,
        providers=providers,
        options=options,
        clock=clock,
    )
    service = OrchestrationService(
        store=store,
        events=events,
        limits=limits,
        runs=runs,
        agents=agents,
        conversation=conversation,
        redis=runtime.redis,
        page_tokens=runtime.page_tokens,
        options=options,
        clock=clock,
    )
    servicer = OrchestrationServicer(service, events)
    registration = ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            orchestration_service_pb2_grpc.add_OrchestrationServiceServicer_to_server(servicer, server)
        ),
        background=[agents.run_watch, runs.run_sweeper],
        on_stop=[runs.shutdown],
    )

    async def close() -> None:
        if reader is not None:
            await reader.aclose()

    if close_on_stop:
        registration.on_stop.append(close)
    return Orchestration(service=service, runs=runs, agents=agents, registration=registration, close=close)


async def register(runtime: Runtime) -> ServiceRegistration:
    return build(runtime).registration
