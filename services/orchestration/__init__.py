"""agentmesh.orchestration.v1.OrchestrationService: sessions, streaming runs, resume and cancel."""

from __future__ import annotations

from agentmesh.orchestration.v1 import orchestration_service_pb2, orchestration_service_pb2_grpc
from services.orchestration import providers
from services.orchestration.agent_cache import AgentCache
from services.orchestration.clients import AgentsClient, ConversationClient, ServiceTokens
from services.orchestration.config import OrchestrationOptions
from services.orchestration.events import stream_client
from services.orchestration.hub import EventHub
from services.orchestration.limits import RunLimits
from services.orchestration.runs import RunManager
from services.orchestration.service import OrchestrationService
from services.orchestration.servicer import OrchestrationServicer
from services.orchestration.store import OrchestrationStore, SessionLocks
from services.platform.runtime import Runtime
from services.platform.server import Built, ServiceRegistration

SERVICE_NAME = orchestration_service_pb2.DESCRIPTOR.services_by_name["OrchestrationService"].full_name


async def build(runtime: Runtime) -> Built[OrchestrationService]:
    settings = runtime.settings
    options = OrchestrationOptions.from_settings(settings.runs, settings.tools)
    own = not runtime.redis_in_process
    redis = (
        stream_client(
            settings.redis_url,
            max_connections=options.max_stream_readers,
            mode=settings.redis_mode,
            retry_seconds=settings.redis_retry_seconds,
        )
        if own
        else runtime.redis
    )
    events = EventHub(
        redis,
        block_ms=options.read_block_ms,
        retention_seconds=options.event_retention_seconds,
        reader_buffer_events=options.reader_buffer_events,
        redis_buffer_events=options.redis_buffer_events,
        in_memory=not own,
    )
    limits = RunLimits(redis, slot_ttl_seconds=options.lease_ttl_seconds, clock=runtime.clock)
    service_token = ServiceTokens(
        runtime.peers.channel(settings.peers.identity),
        service_name="orchestration",
        secret=settings.auth.service_secret,
        timeout=options.peer_timeout_seconds,
    )
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
    store = OrchestrationStore(runtime.engine, autocommit=runtime.autocommit)
    runs = RunManager(
        store=store,
        events=events,
        limits=limits,
        agents=agents,
        conversation=conversation,
        providers=providers.from_settings(settings),
        options=options,
        clock=runtime.clock,
    )
    service = OrchestrationService(
        store=store,
        events=events,
        limits=limits,
        runs=runs,
        agents=agents,
        conversation=conversation,
        locks=SessionLocks(runtime.redis),
        page_tokens=runtime.page_tokens,
        options=options,
        clock=runtime.clock,
    )
    servicer = OrchestrationServicer(service, events)

    return Built(
        service=service,
        registration=ServiceRegistration(
            name=SERVICE_NAME,
            add_to_server=lambda server: (
                orchestration_service_pb2_grpc.add_OrchestrationServiceServicer_to_server(servicer, server)
            ),
            background=[agents.run_watch, runs.sweeper.run],
            # The hub after the runs' end (their last events go through it); embedded, the pool
            # is the runtime's and the runtime closes it.
            on_stop=[runs.shutdown, events.close] if own else [runs.shutdown, events.stop],
        ),
    )
