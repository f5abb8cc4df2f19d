"""Run admission with metering and the quota check against without it (issue 16), at N concurrent
runs: CPU and latency from SendMessage to RUN_STARTED.

    python -m bench.metering [--runs 50] [--rounds 3] [--database-url URL] [--redis-url URL]

One orchestration graph, built here from its classes, with two OrchestrationService objects that
share everything (store, Redis events and limits, run manager, agent cache, the real conversation
service on the given database) except the conversation admission asks: "on" asks the real
conversation's CheckQuota (a gRPC call, one indexed read of the tenant's month, the tenant has a
quota), "off" gets an answer at once (no call, no work). The runs themselves are the same on both
sides. Each round starts --runs sessions and sends one message to each, all at once, at the service
layer (no client transport, so the difference is admission's); the sides take turns, --rounds each,
and each side's figure is its median round. Agents is the in-memory fake of tests/orchestration.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.harness import Figure, figure
from services.conversation import build as build_conversation
from services.conversation.models import QuotaLimit
from services.identity.operator import operator_principal
from services.orchestration.agent_cache import AgentCache
from services.orchestration.clients import AgentsClient, ConversationClient
from services.orchestration.config import OrchestrationOptions
from services.orchestration.events import stream_client
from services.orchestration.hub import EventHub
from services.orchestration.limits import RunLimits
from services.orchestration.models import EventType, QuotaState
from services.orchestration.providers import EchoProvider, Providers
from services.orchestration.runs import RunManager
from services.orchestration.service import OrchestrationService
from services.orchestration.store import OrchestrationStore, SessionLocks
from services.platform import migrations
from services.platform.auth import Principal
from services.platform.runtime import Runtime
from services.platform.server import Server
from services.platform.settings import Settings
from tests.conftest import TestKeys
from tests.orchestration.fakes import FakeAgents, FakeConversation, registrations


class _NoQuotaCheck:
    """Conversation as admission sees it, with CheckQuota answered at once: the "off" side."""

    def __init__(self, inner: ConversationClient):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def check_quota(self, *, token: str) -> QuotaState:
        return QuotaState()


@dataclasses.dataclass
class _Round:
    latencies: list[float]
    cpu_seconds: float
    wall_seconds: float


async def _round(service: OrchestrationService, caller: Principal, agent_id: str, runs: int) -> _Round:
    sessions = [
        await service.start_session(caller, agent_id=agent_id, title="", request_id="") for _ in range(runs)
    ]
    started: list[asyncio.Event] = [asyncio.Event() for _ in range(runs)]
    latencies: list[float] = [0.0] * runs
    drains: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        begin = time.perf_counter()
        run = await service.send_message(
            caller, session_id=sessions[i].id, text="hello there", request_id="", busy_policy=None
        )

        async def follow() -> None:
            async for event in service.events(run.id, 0):
                if event.type is EventType.RUN_STARTED and not started[i].is_set():
                    latencies[i] = time.perf_counter() - begin
                    started[i].set()
                if event.type.terminal:
                    return

        drains.append(asyncio.create_task(follow()))
        await started[i].wait()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(runs)))
    result = _Round(latencies, time.process_time() - cpu, time.perf_counter() - wall)
    # The runs finish outside the measured window, so the next round starts from quiet.
    await asyncio.gather(*drains)
    return result


async def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50, help="concurrent runs per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side, in turns")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14"))
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp()
    settings = Settings.from_env(
        {},
        database_url=args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db",
        redis_url=args.redis_url,
        grpc_port=0,
    )
    settings = dataclasses.replace(
        settings, auth=dataclasses.replace(settings.auth, page_token_secret="bench", service_secret="bench")
    )
    keys = TestKeys(Ed25519PrivateKey.generate(), kid="bench")

    async def jwks() -> dict[str, Any]:
        return keys.jwks()

    base = await Runtime.create(settings)
    base.jwks_source = jwks
    await migrations.upgrade(base.engine, ["orchestration", "conversation"])
    agents = FakeAgents()
    conversation = await build_conversation(base)
    peers_server = Server(
        base, [registrations(agents, FakeConversation())[0], conversation.registration], address="127.0.0.1:0"
    )
    address = f"127.0.0.1:{await peers_server.start()}"
    runtime = await Runtime.create(
        dataclasses.replace(
            settings, peers=dataclasses.replace(settings.peers, agents=address, conversation=address)
        )
    )
    runtime.jwks_source = jwks

    async def service_token() -> str:
        return keys.token(tenant="*", sub="service:orchestration", roles=("service",))

    options = OrchestrationOptions()
    redis = stream_client(settings.redis_url, max_connections=options.max_stream_readers)
    events = EventHub(
        redis, block_ms=options.read_block_ms, retention_seconds=options.event_retention_seconds
    )
    limits = RunLimits(redis, slot_ttl_seconds=options.lease_ttl_seconds, clock=runtime.clock)
    agent_cache = AgentCache(
        AgentsClient(runtime.peers.channel(address), timeout=options.peer_timeout_seconds),
        service_token=service_token,
        max_size=options.agent_cache_size,
        backoff_initial=options.watch_backoff_initial_seconds,
        backoff_max=options.watch_backoff_max_seconds,
        stream_seconds=options.watch_stream_seconds,
    )
    client = ConversationClient(runtime.peers.channel(address), timeout=options.peer_timeout_seconds)
    store = OrchestrationStore(runtime.engine)
    runs = RunManager(
        store=store,
        events=events,
        limits=limits,
        agents=agent_cache,
        conversation=client,
        providers=Providers({"echo": EchoProvider()}),
        options=options,
        clock=runtime.clock,
    )

    def service(admission: Any) -> OrchestrationService:
        return OrchestrationService(
            store=store,
            events=events,
            limits=limits,
            runs=runs,
            agents=agent_cache,
            conversation=admission,
            locks=SessionLocks(redis),
            page_tokens=runtime.page_tokens,
            options=options,
            clock=runtime.clock,
        )

    sides = {"on": service(client), "off": service(_NoQuotaCheck(client))}
    # Enterprise: 100 concurrent runs per tenant, so one tenant per side holds a round.
    callers: dict[str, tuple[Principal, str]] = {}
    for side in sides:
        tenant = f"bench-metering-{side}-{time.time_ns()}"
        token = keys.token(tenant=tenant, sub="bench-user", tier="enterprise", ttl=3600)
        caller = Principal(
            user_id="bench-user",
            tenant_id=tenant,
            roles=frozenset({"member"}),
            tier="enterprise",
            token=token,
        )
        # A quota far from its edge: CheckQuota reads the month and answers "under".
        await conversation.service.set_quota(operator_principal(), tenant, QuotaLimit(tokens=10**12))
        callers[side] = (caller, agents.add(tenant))
    try:
        results: dict[str, list[_Round]] = {side: [] for side in sides}
        for side, svc in sides.items():  # warm-up: connections, caches, the agent
            await _round(svc, *callers[side], max(1, args.runs // 5))
        for _ in range(args.rounds):
            for side, svc in sides.items():
                results[side].append(await _round(svc, *callers[side], args.runs))

        def median_round(side: str) -> _Round:
            by_p50 = sorted(results[side], key=lambda r: statistics.median(r.latencies))
            return by_p50[len(by_p50) // 2]

        on, off = median_round("on"), median_round("off")

        def p(r: _Round, q: float) -> float:
            ordered = sorted(r.latencies)
            return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

        cpu_on = statistics.median(r.cpu_seconds for r in results["on"])
        cpu_off = statistics.median(r.cpu_seconds for r in results["off"])
        print(
            f"metering benchmark: {args.runs} concurrent runs, {args.rounds} rounds per side (median round)"
        )
        for name, r, cpu in (("quota check on ", on, cpu_on), ("quota check off", off, cpu_off)):
            print(
                f"  {name}: SendMessage -> RUN_STARTED p50 {p(r, 0.5):.2f} ms  p99 {p(r, 0.99):.2f} ms;  "
                f"CPU {cpu * 1000:.1f} ms for the round ({cpu / args.runs * 1000:.2f} ms per admission)"
            )
        latency_ratio = p(on, 0.5) / max(p(off, 0.5), 1e-9)
        cpu_ratio = cpu_on / max(cpu_off, 1e-9)
        print(f"  ratio on/off: latency p50 {latency_ratio:.2f}x, CPU {cpu_ratio:.2f}x")
        return [
            figure(
                f"run admission with the quota check against without, {args.runs} concurrent runs "
                "(SendMessage to RUN_STARTED, service layer, real conversation on the run's database)",
                f"p50 {p(on, 0.5):.2f} ms / p99 {p(on, 0.99):.2f} ms with, "
                f"p50 {p(off, 0.5):.2f} ms / p99 {p(off, 0.99):.2f} ms without; "
                f"CPU {cpu_on / args.runs * 1000:.2f} vs {cpu_off / args.runs * 1000:.2f} ms per admission "
                f"({cpu_ratio:.2f}x)",
                latency_ratio,
                "p50 SendMessage -> RUN_STARTED with / without the quota check",
            )
        ]
    finally:
        await runs.shutdown()
        await events.stop()
        await peers_server.stop(0)
        await redis.aclose()
        await runtime.close()
        await base.close()


if __name__ == "__main__":
    asyncio.run(main())
