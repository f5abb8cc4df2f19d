"""Orchestration benchmark: echo provider at zero delay, through the whole service.

Agents and conversation are the in-memory FAKES from tests/orchestration/fakes.py (served by a real
grpc.aio server on a port), so the figures measure orchestration itself: its gRPC stream, PostgreSQL
or SQLite for runs, Redis streams for events, and its calls to the (fake) peers.

    python -m bench.orchestration [--runs 200] [--concurrency 200] [--words 50] [--tool-runs 100]
        [--database-url URL] [--redis-url URL]

The tool step (issue 14): runs of `echo:tools` with one http tool against a local tool server that
answers at once (tests/tools_server.py on 127.0.0.1, allowed as AGENTMESH_TOOL_ALLOWED_HOSTS would),
against the same runs of an agent without tools: p50 run durations and their ratio.

Flags, else REDIS_URL and DATABASE_URL (defaults: 127.0.0.1 Redis db 14 and a local SQLite file).
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

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import struct_pb2

from agentmesh.agents.v1 import agents_service_pb2 as apb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from bench.harness import Figure, figure
from services.orchestration.config import OrchestrationOptions
from services.orchestration.events import stream_client
from services.orchestration.providers import ChatMessage, EchoProvider, ModelConfig, Providers
from services.platform import migrations
from services.platform.runtime import Runtime
from services.platform.server import Server
from services.platform.settings import Settings
from tests.conftest import TestKeys
from tests.helpers import bearer, build_orchestration
from tests.orchestration.fakes import FakeAgents, FakeConversation, registrations
from tests.tools_server import ToolServer


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200, help="sequential runs for time to first delta")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument(
        "--words", type=int, default=50, help="words per message (deltas per run ~ words + 1)"
    )
    parser.add_argument("--tool-runs", type=int, default=100, help="sequential runs with and without a tool")
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
    await migrations.upgrade(base.engine, ["orchestration"])
    agents, conversation = FakeAgents(), FakeConversation()
    fakes = Server(base, registrations(agents, conversation), address="127.0.0.1:0")
    fake_addr = f"127.0.0.1:{await fakes.start()}"
    runtime = await Runtime.create(
        dataclasses.replace(
            settings, peers=dataclasses.replace(settings.peers, agents=fake_addr, conversation=fake_addr)
        )
    )
    runtime.jwks_source = jwks

    async def service_token() -> str:
        return keys.token(tenant="*", sub="service:orchestration", roles=("service",))

    echo = EchoProvider(delay_seconds=0)
    # The local tool server is on loopback: allowed as AGENTMESH_TOOL_ALLOWED_HOSTS=127.0.0.1 would.
    options = OrchestrationOptions(tool_allowed_hosts=("127.0.0.1",))
    redis = stream_client(settings.redis_url, max_connections=options.max_stream_readers)
    orch = build_orchestration(
        runtime,
        redis=redis,
        options=options,
        providers=Providers({"echo": echo}),
        service_token=service_token,
    )
    server = Server(runtime, [orch.registration], address="127.0.0.1:0")
    port = await server.start()
    await asyncio.wait_for(orch.service.agents.watching.wait(), 5)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.OrchestrationServiceStub(channel)
    # Enterprise allows 100 concurrent runs per tenant: the concurrent streams are spread over tenants.
    tenants = []
    for i in range(max(1, -(-args.concurrency // 50))):
        tenant = f"bench-{time.time_ns()}-{i}"
        md_i = bearer(keys.token(tenant=tenant, sub="bench-user", tier="enterprise", ttl=3600))
        tenants.append((md_i, agents.add(tenant)))
    text = " ".join(f"w{i}" for i in range(args.words))

    async def session(i: int = 0) -> tuple[str, Any]:
        md, agent_id = tenants[i % len(tenants)]
        reply = await stub.StartSession(pb.StartSessionRequest(agent_id=agent_id), metadata=md)
        return reply.session.id, md

    completed = {"warm-up": 0, "sequential": 0, "concurrent": 0}

    async def one_run(target: tuple[str, Any], phase: str = "sequential") -> tuple[float, float, int]:
        """(time to first delta, total time, events) of one SendMessage; counts completed runs."""
        start = time.perf_counter()
        first = 0.0
        count = 0
        session_id, md = target
        async for reply in stub.SendMessage(
            pb.SendMessageRequest(session_id=session_id, text=text), metadata=md
        ):
            count += 1
            if not first and reply.event.type == pb.RUN_EVENT_TYPE_MESSAGE_DELTA:
                first = time.perf_counter() - start
            if reply.event.type == pb.RUN_EVENT_TYPE_RUN_COMPLETED:
                completed[phase] += 1
        return first, time.perf_counter() - start, count

    try:
        # Provider alone: the floor.
        messages = [ChatMessage("user", text)]
        direct_first, direct_total = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            got_first = 0.0
            async for _delta in echo.stream(ModelConfig(model="default"), messages):
                got_first = got_first or time.perf_counter() - start
            direct_first.append(got_first)
            direct_total.append(time.perf_counter() - start)

        sid = await session()
        await one_run(sid, "warm-up")  # warm up
        firsts, totals, events = [], [], 0
        for _ in range(args.runs):
            f, t, n = await one_run(sid)
            firsts.append(f)
            totals.append(t)
            events += n
        one_stream_eps = events / sum(totals)

        sessions = [await session(i) for i in range(args.concurrency)]
        start = time.perf_counter()
        results = await asyncio.gather(*(one_run(s, "concurrent") for s in sessions))
        elapsed = time.perf_counter() - start
        many_eps = sum(n for _, _, n in results) / elapsed
        many_first = [f for f, _, _ in results]

        direct_eps = (args.words + 1) / statistics.mean(direct_total)
        print("orchestration benchmark (echo, zero delay; agents and conversation are in-memory fakes)")
        print(
            f"  database {runtime.settings.effective_database_url.split('://')[0]}, {args.words + 1} deltas per run"
        )
        print(
            f"  time to first delta, one stream:  p50 {pct(firsts, 0.5) * 1000:.2f} ms  p99 {pct(firsts, 0.99) * 1000:.2f} ms"
        )
        print(
            f"  time to first delta, {args.concurrency} streams: p50 {pct(many_first, 0.5) * 1000:.2f} ms  "
            f"p99 {pct(many_first, 0.99) * 1000:.2f} ms"
        )
        print(f"  events/s, one stream:       {one_stream_eps:,.0f}")
        print(
            f"  runs completed: {completed['sequential']} of {args.runs} sequential, "
            f"{completed['concurrent']} of {args.concurrency} concurrent (the others failed)"
        )
        print(
            f"  events/s, {args.concurrency} concurrent streams: {many_eps:,.0f}  ({many_eps / one_stream_eps:.1f}x one stream)"
        )
        print(
            f"  provider called directly:   {direct_eps:,.0f} deltas/s, first delta p50 {pct(direct_first, 0.5) * 1e6:.1f} us"
        )
        print(
            f"  overhead: a full run takes {statistics.median(totals) / statistics.median(direct_total):,.0f}x "
            f"the direct provider call ({statistics.median(totals) * 1000:.2f} ms vs "
            f"{statistics.median(direct_total) * 1000:.3f} ms); first delta "
            f"{pct(firsts, 0.5) / max(pct(direct_first, 0.5), 1e-9):,.0f}x"
        )
        plain, tooled = await tool_step(stub, agents, keys, text, args.tool_runs)
        tool_ratio = statistics.median(tooled) / statistics.median(plain)
        print(
            f"  tool step: run p50 {statistics.median(tooled) * 1000:.2f} ms with one http tool call, "
            f"{statistics.median(plain) * 1000:.2f} ms without tools ({tool_ratio:.2f}x)"
        )
        deltas = f"echo at zero delay, {args.words + 1} deltas per run"
        return [
            figure(
                "a run with one http tool call against the same run without tools (echo:tools at zero delay, "
                "a local tool server that answers at once)",
                f"p50 {statistics.median(tooled) * 1000:.2f} ms with the tool step, "
                f"{statistics.median(plain) * 1000:.2f} ms without; {args.tool_runs} sequential runs each",
                tool_ratio,
                "run duration with one tool step / without tools (p50)",
            ),
            figure(
                f"time to first delta, one stream ({deltas})",
                f"p50 {pct(firsts, 0.5) * 1000:.2f} ms, p99 {pct(firsts, 0.99) * 1000:.2f} ms; "
                f"provider called directly p50 {pct(direct_first, 0.5) * 1e6:.1f} µs; "
                f"{args.concurrency} concurrent streams p50 {pct(many_first, 0.5) * 1000:.2f} ms, "
                f"p99 {pct(many_first, 0.99) * 1000:.2f} ms",
                pct(firsts, 0.5) / max(pct(direct_first, 0.5), 1e-9),
                "p50 through the service / provider called directly",
            ),
            figure(
                f"a whole streamed run against the provider called directly ({deltas})",
                f"run p50 {statistics.median(totals) * 1000:.2f} ms; provider alone "
                f"{statistics.median(direct_total) * 1000:.3f} ms ({direct_eps:,.0f} deltas/s)",
                statistics.median(totals) / statistics.median(direct_total),
                "run duration through the service / provider directly (p50)",
            ),
            figure(
                f"events per second, {args.concurrency} concurrent streams against one",
                f"one stream {one_stream_eps:,.0f} events/s; {args.concurrency} streams {many_eps:,.0f} events/s; "
                f"runs completed {completed['sequential']}/{args.runs} sequential, "
                f"{completed['concurrent']}/{args.concurrency} concurrent",
                many_eps / one_stream_eps,
                f"{args.concurrency} streams / one stream (events/s)",
            ),
        ]
    finally:
        await channel.close()
        await server.stop(0)
        await fakes.stop(0)
        await redis.aclose()
        await runtime.close()
        await base.close()


async def tool_step(
    stub: pb_grpc.OrchestrationServiceStub, agents: FakeAgents, keys: TestKeys, text: str, runs: int
) -> tuple[list[float], list[float]]:
    """Durations of `runs` sequential runs without tools, then with one http tool call each (a
    second model step after it): SendMessage until RUN_COMPLETED, in a tenant of their own."""
    tenant = f"bench-tools-{time.time_ns()}"
    md = bearer(keys.token(tenant=tenant, sub="bench-user", tier="enterprise", roles=("owner",), ttl=3600))
    secret = (await stub.RotateToolSigningSecret(pb.RotateToolSigningSecretRequest(), metadata=md)).secret
    server = await ToolServer(secret.encode()).start()
    try:
        schema = struct_pb2.Struct()
        schema.update({"type": "object", "properties": {"text": {"type": "string"}}})
        tool = apb.Tool(
            name="lookup",
            description="answers at once",
            parameters=schema,
            execution=apb.TOOL_EXECUTION_HTTP,
            url=server.url("echo"),
        )
        durations: list[list[float]] = []
        for agent_id in (
            agents.add(tenant, model="echo:tools"),
            agents.add(tenant, model="echo:tools", tools=[tool]),
        ):
            session = (
                await stub.StartSession(pb.StartSessionRequest(agent_id=agent_id), metadata=md)
            ).session
            times = []
            for i in range(runs + 1):  # the first is a warm-up
                start = time.perf_counter()
                last = None
                async for reply in stub.SendMessage(
                    pb.SendMessageRequest(session_id=session.id, text=text), metadata=md
                ):
                    last = reply.event
                if last is None or last.type != pb.RUN_EVENT_TYPE_RUN_COMPLETED:
                    raise RuntimeError(f"a tool-step run did not complete: {last}")
                if i:
                    times.append(time.perf_counter() - start)
            durations.append(times)
        if len(server.calls) != runs + 1 or not all(c.verified for c in server.calls):
            raise RuntimeError(
                f"the tool server saw {len(server.calls)} calls, expected {runs + 1} signed ones"
            )
        return durations[0], durations[1]
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
