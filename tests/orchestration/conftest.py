"""`make_mesh()`: fake agents + conversation on one real server, orchestration (built with short
timings) on another real server whose peers point at the fakes, and helpers to call it."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from agentmesh.conversation.v1 import conversation_service_pb2_grpc as cpb_grpc
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from services.conversation import build as build_conversation
from services.orchestration.config import OrchestrationOptions
from services.orchestration.events import stream_client
from services.orchestration.providers import EchoProvider, Providers
from services.orchestration.service import OrchestrationService
from services.platform.runtime import Runtime
from services.platform.server import Server
from tests.fakes.conversation import FakeConversation
from tests.helpers import bearer, build_orchestration, build_runtime, start_server
from tests.orchestration.fakes import FakeAgents, registrations

FAST = OrchestrationOptions(
    lease_ttl_seconds=1.0,
    lease_renew_seconds=0.25,
    sweep_interval_seconds=0.2,
    read_block_ms=200,
    cancel_poll_seconds=0.05,
    peer_timeout_seconds=5.0,
    watch_backoff_initial_seconds=0.05,
    watch_backoff_max_seconds=0.2,
    event_retention_seconds=600,
)


@dataclasses.dataclass
class Mesh:
    stub: pb_grpc.OrchestrationServiceStub
    agents: FakeAgents
    conversation: FakeConversation
    orch: OrchestrationService
    redis: aioredis.Redis
    runtime: Runtime
    server: Server
    channel: grpc.aio.Channel
    keys: Any
    tenant: str

    def md(
        self,
        *,
        tenant: str | None = None,
        sub: str = "user-1",
        roles: tuple[str, ...] = ("member",),
        tier: str = "pro",
    ) -> Any:
        return bearer(self.keys.token(tenant=tenant or self.tenant, sub=sub, roles=roles, tier=tier))

    async def session(self, agent_id: str | None = None, **agent_config: Any) -> pb.Session:
        agent_id = agent_id or self.agents.add(self.tenant, **agent_config)
        reply = await self.stub.StartSession(pb.StartSessionRequest(agent_id=agent_id), metadata=self.md())
        return reply.session

    async def send(self, session_id: str, text: str, **kw: Any) -> list[pb.RunEvent]:
        md = kw.pop("metadata", None) or self.md()
        call = self.stub.SendMessage(
            pb.SendMessageRequest(session_id=session_id, text=text, **kw), metadata=md
        )
        return [r.event async for r in call]


@pytest.fixture
async def make_mesh(serve, settings, keys) -> AsyncIterator[Callable[..., Any]]:
    cleanups: list[Any] = []

    async def make(
        *,
        options: OrchestrationOptions = FAST,
        echo_delay: float = 0.0,
        providers: Providers | None = None,
        share: Mesh | None = None,
    ) -> Mesh:
        if share is None:
            agents, conversation = FakeAgents(), FakeConversation()
            fakes = await serve(*registrations(agents, conversation))
            address, tenant = fakes.address, f"tenant-{uuid.uuid4().hex[:8]}"
        else:
            agents, conversation, tenant = share.agents, share.conversation, share.tenant
            address = share.runtime.settings.peers.agents
        peers = dataclasses.replace(settings.peers, agents=address, conversation=address)
        runtime = await build_runtime(dataclasses.replace(settings, peers=peers), keys)

        async def service_token() -> str:
            return keys.token(tenant="*", sub="service:orchestration", roles=("service",))

        redis = stream_client(
            runtime.settings.redis_url,
            max_connections=options.max_stream_readers,
            mode=runtime.settings.redis_mode,
        )
        built = build_orchestration(
            runtime,
            redis=redis,
            options=options,
            providers=providers or Providers({"echo": EchoProvider(delay_seconds=echo_delay)}),
            service_token=service_token,
        )
        running = await start_server(runtime, built.registration)
        mesh = Mesh(
            pb_grpc.OrchestrationServiceStub(running.channel),
            agents,
            conversation,
            built.service,
            redis,
            runtime,
            running.server,
            running.channel,
            keys,
            tenant,
        )
        cleanups.append(mesh)
        await asyncio.wait_for(built.service.agents.watching.wait(), 5)
        return mesh

    yield make
    # Each step is bounded (and a step that ignores its cancellation is left behind, not awaited):
    # a teardown must not hold the suite; what it left is logged with its stack.
    for mesh in reversed(cleanups):
        await _bounded(mesh.channel.close())
        # The runs' tasks end within the stop (RunManager.shutdown waits for them, finishing ones
        # too), before the pools close: a task still writing then would reconnect a closed client.
        await _bounded(mesh.server.stop(0))
    await _end_leftover_tasks()
    for mesh in reversed(cleanups):
        await _bounded(mesh.redis.aclose())
        await _bounded(mesh.runtime.close())


log = logging.getLogger("tests")


async def _bounded(step: Any, seconds: float = 15) -> None:
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        task.result()
        return
    task.cancel()
    log.warning("teardown step timed out after %s s: %r\n%s", seconds, step, _stacks([task]))


async def _end_leftover_tasks(seconds: float = 0.5, quiet: float = 0.05) -> None:
    """Lets the handlers the stop cancelled finish their clean-up before the pools close under them
    (the fakes' server still runs, so its tasks are not this teardown's to cancel). Done when they
    are, or when none has ended for `quiet` seconds: what is left then waits for something closed
    later (the fakes' WatchAgents handlers end with the runtime's peer channels), and waiting the
    whole `seconds` for it cost every test that made a mesh half a second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    pending = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    while pending and loop.time() < deadline:
        done, pending = await asyncio.wait(pending, timeout=min(quiet, deadline - loop.time()))
        if not done:
            return


def _stacks(tasks: Any) -> str:
    out = io.StringIO()
    for task in tasks:
        out.write(f"--- {task!r}\n")
        task.print_stack(file=out)
    return out.getvalue()


# With the real conversation service (PostgreSQL) --------------------------------------------------


@dataclasses.dataclass
class RealMesh:
    """Orchestration over the real conversation service on PostgreSQL (agents still the fake)."""

    stub: pb_grpc.OrchestrationServiceStub
    conv: cpb_grpc.ConversationServiceStub
    agents: FakeAgents
    conversation_service: Any
    tenant: str
    keys: Any

    def md(
        self, *, tenant: str | None = None, sub: str = "user-1", roles: tuple[str, ...] = ("member",)
    ) -> Any:
        return bearer(self.keys.token(tenant=tenant or self.tenant, sub=sub, roles=roles, tier="pro"))


@pytest.fixture
async def make_real_mesh(serve, runtime, settings, keys) -> AsyncIterator[Callable[..., Any]]:
    """`await make_real_mesh(echo_delay=...)`: one RealMesh (echo answers a word per delay)."""
    cleanups: list[Any] = []

    async def make(*, echo_delay: float = 0.01) -> RealMesh:
        agents = FakeAgents()
        conversation = await build_conversation(runtime)
        agent_registration = registrations(agents, FakeConversation())[0]
        peers_server = await serve(agent_registration, conversation.registration)
        peers = dataclasses.replace(
            settings.peers, agents=peers_server.address, conversation=peers_server.address
        )
        orch_runtime = await build_runtime(dataclasses.replace(settings, peers=peers), keys)
        redis = stream_client(
            orch_runtime.settings.redis_url,
            max_connections=FAST.max_stream_readers,
            mode=orch_runtime.settings.redis_mode,
        )

        async def service_token() -> str:
            return keys.token(tenant="*", sub="service:orchestration", roles=("service",))

        built = build_orchestration(
            orch_runtime,
            redis=redis,
            options=FAST,
            providers=Providers({"echo": EchoProvider(delay_seconds=echo_delay)}),
            service_token=service_token,
        )
        running = await start_server(orch_runtime, built.registration)
        cleanups.append((running, redis, orch_runtime))
        await asyncio.wait_for(built.service.agents.watching.wait(), 5)
        return RealMesh(
            pb_grpc.OrchestrationServiceStub(running.channel),
            cpb_grpc.ConversationServiceStub(peers_server.channel),
            agents,
            conversation.service,
            f"tenant-{uuid.uuid4().hex[:8]}",
            keys,
        )

    yield make
    for running, redis, orch_runtime in reversed(cleanups):
        await _bounded(running.close())
        await _bounded(redis.aclose())
        await _bounded(orch_runtime.close())


@pytest.fixture
async def real_mesh(make_real_mesh: Callable[..., Any]) -> RealMesh:
    mesh: RealMesh = await make_real_mesh()
    return mesh
