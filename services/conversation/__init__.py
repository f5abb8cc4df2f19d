"""agentmesh.conversation.v1.ConversationService: durable messages (PostgreSQL), a hot context
window (Redis), history, full-text search, usage statistics and retention."""

from __future__ import annotations

from agentmesh.conversation.v1 import conversation_service_pb2, conversation_service_pb2_grpc
from services.conversation.hot_window import HotWindow, NoHotWindow
from services.conversation.retention import RetentionJob
from services.conversation.search import MessageSearch
from services.conversation.service import ConversationService
from services.conversation.service import HotWindow as HotWindowProtocol
from services.conversation.servicer import ConversationServicer
from services.conversation.store import ConversationStore
from services.conversation.tokens import ApproximateTokenCounter
from services.platform.metrics import USAGE
from services.platform.runtime import Runtime
from services.platform.server import Built, ServiceRegistration

SERVICE_NAME = conversation_service_pb2.DESCRIPTOR.services_by_name["ConversationService"].full_name


async def build(runtime: Runtime) -> Built[ConversationService]:
    store = ConversationStore(runtime.engine, autocommit=runtime.autocommit)
    # With fakeredis in this process, SQLite reads the newest messages as fast as a window would.
    hot: HotWindowProtocol = NoHotWindow() if runtime.redis_in_process else HotWindow(runtime.redis)
    service = ConversationService(
        store=store,
        search=MessageSearch(runtime.engine),
        hot=hot,
        counter=ApproximateTokenCounter(),
        page_tokens=runtime.page_tokens,
        meter=USAGE,
        clock=runtime.clock,
    )
    servicer = ConversationServicer(service=service)
    retention = RetentionJob(store=store, hot=hot, clock=runtime.clock)
    return Built(
        service=service,
        registration=ServiceRegistration(
            name=SERVICE_NAME,
            add_to_server=lambda server: (
                conversation_service_pb2_grpc.add_ConversationServiceServicer_to_server(servicer, server)
            ),
            background=[retention.run_forever],
        ),
    )
