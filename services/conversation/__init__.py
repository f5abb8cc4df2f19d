"""agentmesh.conversation.v1.ConversationService: durable messages (PostgreSQL), a hot context
window (Redis), history, full-text search, usage statistics and retention."""

from __future__ import annotations

import redis.asyncio as aioredis

from agentmesh.conversation.v1 import conversation_service_pb2, conversation_service_pb2_grpc
from services.conversation.hot_window import HotWindow
from services.conversation.retention import RETENTION_INTERVAL_SECONDS, RetentionJob
from services.conversation.search import MessageSearch
from services.conversation.service import ConversationService
from services.conversation.servicer import ConversationServicer
from services.conversation.store import ConversationStore
from services.conversation.tokens import ApproximateTokenCounter
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration

SERVICE_NAME = conversation_service_pb2.DESCRIPTOR.services_by_name["ConversationService"].full_name


def build_service(runtime: Runtime, *, redis: aioredis.Redis | None = None) -> ConversationService:
    """The service over the runtime's engine and Redis (or `redis`, for a separate hot-window server)."""
    store = ConversationStore(runtime.engine, autocommit=runtime.autocommit)
    return ConversationService(
        store=store,
        search=MessageSearch(runtime.engine),
        hot=HotWindow(redis if redis is not None else runtime.redis),
        counter=ApproximateTokenCounter(),
        page_tokens=runtime.page_tokens,
        clock=runtime.clock,
    )


async def register(
    runtime: Runtime,
    *,
    redis: aioredis.Redis | None = None,
    retention_interval: float = RETENTION_INTERVAL_SECONDS,
) -> ServiceRegistration:
    service = build_service(runtime, redis=redis)
    servicer = ConversationServicer(service=service)
    job = RetentionJob(store=service.store, hot=service.hot, clock=runtime.clock)
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: conversation_service_pb2_grpc.add_ConversationServiceServicer_to_server(
            servicer, server
        ),
        background=[lambda: job.run_forever(retention_interval)],
    )
