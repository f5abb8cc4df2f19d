"""`agentmesh up` with its defaults (SQLite, the in-process Redis, all four services in one process,
the wiring a user gets) holds 500 concurrent streams (issue 15): every SendMessage ends with
RUN_COMPLETED, none fails, none hangs, and every answer is stored whole; then, SIGTERM with 500
streams open: `up` exits within 30 s and every stream ends with a terminal event or a status.

Before SQLite's writes went through one inline writer (platform.db.SqliteWriter), 500 paced chats
on `up` failed in the hundreds (bench/chat_load.py: RUN_FAILED DEADLINE_EXCEEDED): write
transactions held SQLite's lock across a loop turn per statement, the other writers slept in its
busy handler holding pool connections, and GetContext and AppendMessage waited for a connection
past the 10 s peer deadline. The echo here is fast (the point is concurrency, not pace)."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agentmesh.agents.v1 import agents_service_pb2 as apb
from agentmesh.agents.v1 import agents_service_pb2_grpc as apb_grpc
from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as cpb_grpc
from agentmesh.identity.v1 import identity_service_pb2 as ipb
from agentmesh.identity.v1 import identity_service_pb2_grpc as ipb_grpc
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from services.admin_cli import _with_operator
from services.identity.operator import Operator, operator_principal
from services.platform.settings import Settings
from tests.embedded import Embedded, run_embedded
from tests.helpers import bearer

pytestmark = pytest.mark.slow

T = pb.RunEventType
TERMINAL = {T.RUN_EVENT_TYPE_RUN_COMPLETED, T.RUN_EVENT_TYPE_RUN_FAILED, T.RUN_EVENT_TYPE_RUN_CANCELLED}
CHATS = 500
PER_TENANT = 100  # the enterprise tier's concurrent runs
PASSWORD = "five hundred streams, long enough 42"
# Each client call's own bound: a stream that hangs fails the test with its chat named, not CI's limit.
DEADLINE = 120.0


def _prepare(data_dir: Path, tenants: int) -> None:
    """The enterprise tenants, as the operator creates them before the first start."""

    async def create(op: Operator) -> str:
        for i in range(tenants):
            await op.create_tenant(
                operator_principal(), name=f"load-{i}", tier="enterprise", owner="owner", password=PASSWORD
            )
        return ""

    asyncio.run(_with_operator(Settings.from_env({}, data_dir=str(data_dir), embedded=True), create))


async def _sessions(
    channel: grpc.aio.Channel, tenants: int
) -> list[tuple[tuple[tuple[str, str], ...], pb.Session]]:
    """A session per chat, PER_TENANT per tenant, each tenant with its echo agent."""
    out = []
    gate = asyncio.Semaphore(16)
    orch = pb_grpc.OrchestrationServiceStub(channel)

    async def start(md: tuple[tuple[str, str], ...], agent_id: str) -> pb.Session:
        async with gate:
            reply = await orch.StartSession(
                pb.StartSessionRequest(agent_id=agent_id), metadata=md, timeout=60
            )
            return reply.session

    for i in range(tenants):
        login = await ipb_grpc.IdentityServiceStub(channel).Login(
            ipb.LoginRequest(tenant=f"load-{i}", username="owner", password=PASSWORD), timeout=60
        )
        md = bearer(login.tokens.access_token)
        agent = await apb_grpc.AgentServiceStub(channel).CreateAgent(
            apb.CreateAgentRequest(
                agent=apb.Agent(display_name="Echo", config=apb.AgentConfig(model="echo:default"))
            ),
            metadata=md,
            timeout=60,
        )
        sessions = await asyncio.gather(*(start(md, agent.agent.id) for _ in range(PER_TENANT)))
        out += [(md, s) for s in sessions]
    return out


async def _chat(
    channel: grpc.aio.Channel, md: tuple[tuple[str, str], ...], session: pb.Session, text: str
) -> tuple[list[pb.RunEvent], str]:
    """One SendMessage read to its end: its events, and its status ('' when it ended OK)."""
    events: list[pb.RunEvent] = []
    call = pb_grpc.OrchestrationServiceStub(channel).SendMessage(
        pb.SendMessageRequest(session_id=session.id, text=text), metadata=md, timeout=DEADLINE
    )
    try:
        async for reply in call:
            events.append(reply.event)
    except grpc.aio.AioRpcError as err:
        return events, f"{err.code().name}: {err.details()}"
    return events, ""


def _end(events: list[pb.RunEvent]) -> str:
    if not events:
        return "no events"
    last = events[-1]
    end = T.Name(last.type) if last.type in TERMINAL else f"no terminal event after {T.Name(last.type)}"
    return f"{end} {last.error.code}".strip()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Embedded]:
    _prepare(tmp_path / "data", CHATS // PER_TENANT)
    with run_embedded(tmp_path / "data", echo_delay_ms=2) as running:
        yield running


async def test_500_concurrent_streams_on_the_embedded_default_complete(up: Embedded) -> None:
    # Clients as separate users' would be: a connection per tenant.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(up.grpc_target, options=options) for _ in range(CHATS // PER_TENANT)
    ]
    try:
        chats = await _sessions(channels[0], CHATS // PER_TENANT)
        assert len(chats) == CHATS
        texts = [f"chat {i} asks about the weather today" for i in range(CHATS)]
        began = time.monotonic()
        results = await asyncio.gather(
            *(
                _chat(channels[i // PER_TENANT], md, session, texts[i])
                for i, (md, session) in enumerate(chats)
            )
        )
        print(f"{CHATS} chats ended {time.monotonic() - began:.1f} s after they began")

        ends = collections.Counter(status or _end(events) for events, status in results)
        assert ends == {"RUN_EVENT_TYPE_RUN_COMPLETED": CHATS}, ends
        messages = cpb_grpc.ConversationServiceStub(channels[0])
        for i, ((md, session), (events, _)) in enumerate(zip(chats, results, strict=True)):
            assert [e.event_id for e in events] == list(range(1, len(events) + 1)), i
            deltas = "".join(e.text_delta for e in events if e.type == T.RUN_EVENT_TYPE_MESSAGE_DELTA)
            assert texts[i] in deltas, (i, deltas)
            history = await messages.ListMessages(
                cpb.ListMessagesRequest(conversation_id=session.conversation_id), metadata=md, timeout=60
            )
            assert [(m.role, m.content) for m in history.messages] == [
                (cpb.MESSAGE_ROLE_USER, texts[i]),
                (cpb.MESSAGE_ROLE_ASSISTANT, deltas),
            ], i

        # SIGTERM with 500 streams open: `up` exits within the bound run_embedded checks (its grace
        # is 10 s) and every stream ends, with a terminal event or a status.
        long_text = " ".join(f"w{j}" for j in range(2_000))  # 4 s of answer at 2 ms a word
        streaming = asyncio.Event()
        opened = 0

        async def open_chat(i: int) -> tuple[list[pb.RunEvent], str]:
            nonlocal opened
            md, session = chats[i]
            events: list[pb.RunEvent] = []
            call = pb_grpc.OrchestrationServiceStub(channels[i // PER_TENANT]).SendMessage(
                pb.SendMessageRequest(session_id=session.id, text=long_text), metadata=md, timeout=DEADLINE
            )
            try:
                async for reply in call:
                    events.append(reply.event)
                    if len(events) == 1:
                        opened += 1
                        if opened == CHATS // 10:
                            streaming.set()
            except grpc.aio.AioRpcError as err:
                return events, err.code().name
            return events, ""

        tasks = [asyncio.create_task(open_chat(i)) for i in range(CHATS)]
        await asyncio.wait_for(streaming.wait(), DEADLINE)
        assert up.proc is not None
        up.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(up.proc.wait, 30)
        print(f"exited {code} {time.monotonic() - signalled:.1f} s after SIGTERM")
        assert code == 0
        ended = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
        stopped = collections.Counter(status or _end(events) for events, status in ended)
        print(f"with 500 streams open: {dict(stopped)}")
        assert not [k for k in stopped if k.startswith(("no events", "no terminal event"))], stopped
    finally:
        for channel in channels:
            await channel.close()
