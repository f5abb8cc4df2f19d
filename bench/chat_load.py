"""Concurrent paced chats (issue 15): N chats at once against `agentmesh up` (embedded defaults, and on
PostgreSQL + Redis), against `agentmesh serve` with every service its own process, and against the
LangGraph Agent Server (`langgraph dev`, in-memory runtime) streaming the same paced answer; the
sides take turns at each N, so every ratio agentmesh / LangGraph comes from the same minutes.

    python -m bench.chat_load [--chats 1 50 200 500] [--words 50] [--delay-ms 20]
        [--sides floor langgraph embedded postgres services] [--timeout 120] [--settle 1]
        [--database-url URL]

Every chat is its own session (LangGraph: its own thread) and sends one message of --words words; the
echo provider answers "Echo: " and the message one word token every --delay-ms (51 tokens, 50 a
second), paced like a hosted model: token i is due (i + 1) * delay after the start, whatever the
server does between tokens (services/orchestration/providers/echo.py `paced`; LangGraph's graph and
the floor pace alike). --delay-ms 0: unpaced, the zero-delay streams of bench/orchestration.py. The clients run in a process of their own, started for each measurement (bench/chat_client.py,
grpc.aio; bench/langgraph_app/client.py, langgraph-sdk over SSE, stream_mode messages-tuple): it sets
up the sessions, runs one warm-up chat, then starts every chat at once. Each server is started afresh
for each N and side (bench/chat_servers.py) and stopped after it; PostgreSQL sides get fresh databases
and a redis-server this bench starts on a free port (--redis-url is accepted for `python -m bench`
and not used: the connection count must be the server's alone).

Per N and side: time to first delta p50/p99 (from the request); delivered pace (the tokens after the
first delta over the time from the first delta to the last, mean over the chats that completed)
against the provider's; worst gap between two deltas of a chat, p99 over chats; failures by status
(a chat fails when it ends with a status, a failed run, no terminal event, or fewer tokens); server
CPU seconds of the server's process tree (/proc) while the chats ran; peak Redis connections (INFO
clients; the embedded default's Redis is in-process); peak RSS and (peak - idle) / N per open chat.

The floor (bench/chat_floor.py) is what this machine's Python grpc.aio does with nothing else: a bare
server in a process of its own whose SendMessage paces the same tokens as echo and yields each
as its own message (no storage, Redis, auth or coalescing), driven by the same client code over the
same connections. agentmesh / floor is the cost of everything agentmesh does per chat; a target the
floor itself misses is out of reach of this design in one Python process.

LangGraph runs from its own virtualenv, `make bench-langgraph` (.venv-langgraph, pyproject's
langgraph-bench dependency group): langgraph-api pins protobuf < 7 and grpcio < 1.82, agentmesh needs
protobuf >= 7.35.1 and grpcio >= 1.85.1, so it cannot share .venv. Without it the LangGraph side is
skipped and the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import math
import os
import pathlib
import statistics
import subprocess
import tempfile
from typing import Any

import redis.asyncio as aredis

from bench.chat_servers import ROOT, Running, Sides, cpu_seconds, langgraph_available, rss_bytes
from bench.harness import Figure, figure
from bench.orchestration import pct

SIDES = ("floor", "langgraph", "embedded", "postgres", "services")
# The references every agentmesh side is divided by: a peer product, and bare grpc.aio.
REFERENCES = ("langgraph", "floor")
LABELS = {
    "floor": "floor: bare grpc.aio, paced yields",
    "langgraph": "LangGraph dev (in-memory)",
    "embedded": "agentmesh up (embedded)",
    "postgres": "agentmesh up (PostgreSQL + Redis)",
    "services": "agentmesh serve (process per service)",
}
# Server CPU per chat at 50 chats (the largest N at which every chat of every side completed) before
# the rebuild: its target is at most half of these. `python -m bench.chat_load` at e41420d
# on 2026-12-03, load average 6-9 on the 2 cores (docs/orchestration.md, "Concurrent paced chats").
CPU_N = 50
BEFORE_CPU_MS_PER_CHAT = {"embedded": 209.8, "postgres": 109.2, "services": 89.0}
CHATS_PER_TENANT = 50


@dataclasses.dataclass
class Measured:
    side: str
    chats: int
    ttfd: list[float]
    paces: list[float]
    gaps: list[float]
    failures: collections.Counter[str]
    server_cpu: float
    client_cpu: float
    rss_idle: int
    rss_peak: int
    redis_peak: int | None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def ttfd_ms(self, q: float) -> float:
        return pct(self.ttfd, q) * 1000 if self.ttfd else math.nan

    @property
    def gap_p99_ms(self) -> float:
        return pct(self.gaps, 0.99) * 1000 if self.gaps else math.nan

    @property
    def pace(self) -> float:
        return statistics.mean(self.paces) if self.paces else 0.0

    @property
    def cpu_ms_per_chat(self) -> float:
        return self.server_cpu * 1000 / self.chats

    @property
    def kb_per_chat(self) -> float:
        return (self.rss_peak - self.rss_idle) / 1024 / self.chats


def summarize(side: str, chats: list[dict[str, Any]], expected_tokens: int) -> dict[str, Any]:
    """Per-chat arrivals to the figures: TTFDs (inf for a chat without a delta), paces of the
    completed chats, worst gaps, failures."""
    ttfd, paces, gaps = [], [], []
    failures: collections.Counter[str] = collections.Counter()
    for chat in chats:
        arrivals = chat["arrivals"]
        tokens = sum(n for _, n in arrivals)
        error = chat["error"] or (
            None if tokens == expected_tokens else f"{tokens} of {expected_tokens} tokens"
        )
        # A chat that never got a delta counts as never, not as absent: p99 is then unbounded.
        ttfd.append(math.inf if chat["ttfd"] is None else chat["ttfd"])
        if len(arrivals) > 1:
            gaps.append(max(b[0] - a[0] for a, b in itertools.pairwise(arrivals)))
        if error:
            failures[error] += 1
        elif len(arrivals) > 1 and arrivals[-1][0] > arrivals[0][0]:
            paces.append((tokens - arrivals[0][1]) / (arrivals[-1][0] - arrivals[0][0]))
    return {"ttfd": ttfd, "paces": paces, "gaps": gaps, "failures": failures}


async def measure(running: Running, chats: int, args: argparse.Namespace, text: str) -> Measured:
    """One client process, `chats` chats at once against the running side."""
    spec = await running.spec(chats) | {"text": text, "timeout": args.timeout, "warmup": True}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    child = await asyncio.create_subprocess_exec(
        *running.client,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        limit=1 << 28,  # the answer is one JSON line with every arrival of every chat
    )
    assert child.stdin is not None and child.stdout is not None
    redis = aredis.Redis.from_url(running.redis_url) if running.redis_url else None

    async def connections() -> int | None:
        if redis is None:
            return None
        # Bounded: a reply that never came once held the sampler, and the measurement with it, for
        # 14 minutes (the cancelled sampler did not end until the process was interrupted).
        info = await asyncio.wait_for(redis.info("clients"), 2)
        return int(info["connected_clients"]) - 1  # not this reader's own

    try:
        child.stdin.write(json.dumps(spec).encode() + b"\n")
        await child.stdin.drain()
        if not await asyncio.wait_for(child.stdout.readline(), 600):
            raise RuntimeError(f"{running.side}: the client process exited while setting up")
        await asyncio.sleep(args.settle)  # the warm-up run's last writes
        rss_idle = rss_bytes(running.pids)
        peak = {"rss": rss_idle, "redis": await connections()}
        cpu_before = cpu_seconds(running.pids)

        async def sample() -> None:
            while True:
                await asyncio.sleep(0.2)
                peak["rss"] = max(peak["rss"] or 0, rss_bytes(running.pids))
                try:
                    conns = await connections()
                except TimeoutError:
                    continue  # this sample only
                if conns is not None:
                    peak["redis"] = max(peak["redis"] or 0, conns)

        sampler = asyncio.create_task(sample())
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        try:
            line = await asyncio.wait_for(child.stdout.readline(), args.timeout + 300)
        finally:
            server_cpu = cpu_seconds(running.pids) - cpu_before
            sampler.cancel()
            await asyncio.wait({sampler}, timeout=5)  # not `await sampler`: that swallowed our own cancel
        if not line:
            raise RuntimeError(f"{running.side}: the client process exited without its answer")
        result = json.loads(line)
    finally:
        if child.returncode is None:
            child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
                await child.wait()
        if redis is not None:
            await redis.aclose()
    return Measured(
        running.side,
        chats,
        **summarize(running.side, result["chats"], args.words + 1),
        server_cpu=server_cpu,
        client_cpu=result["cpu_seconds"],
        rss_idle=rss_idle,
        rss_peak=int(peak["rss"] or rss_idle),
        redis_peak=peak["redis"],
    )


def _row(m: Measured, provider: float) -> str:
    redis = "-" if m.redis_peak is None else str(m.redis_peak)
    return (
        f"  {LABELS[m.side]:<38} {m.ttfd_ms(0.5):8.0f} {m.ttfd_ms(0.99):8.0f} {m.pace:6.1f} "
        f"{m.pace / provider:5.2f} {m.gap_p99_ms:7.0f} {m.failed:6d} {m.server_cpu:7.1f} "
        f"{m.cpu_ms_per_chat:8.1f} {redis:>6} {m.rss_peak / 2**20:7.0f} {m.kb_per_chat:8.0f} {m.client_cpu:6.1f}"
    )


def report(chats: int, rows: list[Measured], provider: float) -> list[str]:
    lines = [
        f"{chats} concurrent chats",
        f"  {'side':<38} {'TTFD p50':>8} {'p99 ms':>8} {'tok/s':>6} {'/prov':>5} {'gap p99':>7} "
        f"{'failed':>6} {'CPU s':>7} {'ms/chat':>8} {'redis':>6} {'RSS MB':>7} {'KB/chat':>8} {'client':>6}",
    ]
    lines += [_row(m, provider) for m in rows]
    for m in rows:
        if m.failures:
            lines.append(
                f"  failures, {LABELS[m.side]}: "
                + "; ".join(f"{n} {why}" for why, n in m.failures.most_common())
            )
    for ref in REFERENCES:
        base = next((m for m in rows if m.side == ref), None)
        if base is None:
            continue
        name = "LangGraph" if ref == "langgraph" else "floor"
        for m in rows:
            if m.side not in REFERENCES:
                lines.append(
                    f"  agentmesh / {name}, {LABELS[m.side]}: TTFD p99 {_ratio(m.ttfd_ms(0.99), base.ttfd_ms(0.99))}, "
                    f"pace {_ratio(m.pace, base.pace)}, gap p99 {_ratio(m.gap_p99_ms, base.gap_p99_ms)}, "
                    f"server CPU {_ratio(m.server_cpu, base.server_cpu)}"
                )
    return lines


def _div(ours: float, theirs: float) -> float:
    """ours / theirs, NaN when it means nothing (no reference, both unbounded)."""
    if not theirs or math.isnan(theirs) or math.isnan(ours) or (math.isinf(ours) and math.isinf(theirs)):
        return math.nan
    return ours / theirs


def _ratio(ours: float, theirs: float) -> str:
    ratio = _div(ours, theirs)
    return "n/a" if math.isnan(ratio) else f"{ratio:.2f}"


def figures(results: dict[int, dict[str, Measured]], provider: float, delay_ms: int) -> list[Figure]:
    """The summary rows: each agentmesh side at the largest N against the issue's targets, with the
    ratio to LangGraph at that N where it ran (else to the provider's own pace and first token) and
    the floor's figures beside; then the floor itself against the same targets."""
    n = max(results)
    at_n = results[n]
    lg = at_n.get("langgraph")
    fl = at_n.get("floor")
    out = []
    for side in ("embedded", "postgres", "services"):
        m = at_n.get(side)
        if m is None:
            continue
        label = f"{n} paced chats, {LABELS[side]}"
        per_n = "; ".join(
            f"{k}: {_ratio(r[side].ttfd_ms(0.99), r['langgraph'].ttfd_ms(0.99))} / {_ratio(r[side].pace, r['langgraph'].pace)}"
            for k, r in sorted(results.items())
            if side in r and "langgraph" in r
        )
        vs_lg = f"; agentmesh / LangGraph TTFD p99 / pace at N = {per_n}" if per_n else ""
        per_n_floor = "; ".join(
            f"{k}: {_ratio(r[side].ttfd_ms(0.99), r['floor'].ttfd_ms(0.99))} / {_ratio(r[side].pace, r['floor'].pace)}"
            for k, r in sorted(results.items())
            if side in r and "floor" in r
        )
        vs_lg += f"; agentmesh / floor at N = {per_n_floor}" if per_n_floor else ""
        lg_ttfd = f", LangGraph {lg.ttfd_ms(0.5):.0f} / {lg.ttfd_ms(0.99):.0f} ms" if lg else ""
        lg_ttfd += f", floor {fl.ttfd_ms(0.5):.0f} / {fl.ttfd_ms(0.99):.0f} ms" if fl else ""
        vs = _div(m.ttfd_ms(0.99), lg.ttfd_ms(0.99)) if lg else math.nan
        out.append(
            figure(
                f"{label}: time to first delta p99",
                f"p50 {m.ttfd_ms(0.5):.0f} ms, p99 {m.ttfd_ms(0.99):.0f} ms{lg_ttfd}{vs_lg}",
                *(
                    (vs, "TTFD p99 agentmesh / LangGraph")
                    if not math.isnan(vs)
                    else (
                        m.ttfd_ms(0.99) / delay_ms,
                        f"TTFD p99 / the provider's first token ({delay_ms} ms)",
                    )
                ),
                at_most=250,
                value=m.ttfd_ms(0.99),
                target="<= 250 ms at 500 chats",
            )
        )
        lg_pace = f"; LangGraph {lg.pace:.1f} tokens/s ({lg.pace / provider:.2f})" if lg else ""
        lg_pace += f"; floor {fl.pace:.1f} tokens/s ({fl.pace / provider:.2f})" if fl else ""
        out.append(
            figure(
                f"{label}: delivered pace",
                f"{m.pace:.1f} tokens/s per chat, provider {provider:.0f}{lg_pace}",
                m.pace / provider,
                "delivered / provider pace (mean over chats)",
                at_least=0.95,
            )
        )
        lg_gap = f", LangGraph {lg.gap_p99_ms:.0f} ms" if lg else ""
        lg_gap += f", floor {fl.gap_p99_ms:.0f} ms" if fl else ""
        out.append(
            figure(
                f"{label}: worst gap between deltas p99",
                f"{m.gap_p99_ms:.0f} ms{lg_gap}",
                m.gap_p99_ms / delay_ms,
                f"gap p99 / the provider's interval ({delay_ms} ms)",
                at_most=100,
                value=m.gap_p99_ms,
                target="<= 100 ms",
            )
        )
        why = "; ".join(f"{c} {w}" for w, c in m.failures.most_common(3))
        out.append(
            figure(
                f"{label}: failed chats",
                f"{m.failed} of {n}" + (f" ({why})" if why else ""),
                m.failed / n,
                "failed / chats",
                at_most=0,
                value=m.failed,
                target="none failed",
            )
        )
        cpu_n = CPU_N if CPU_N in results else n
        c = results[cpu_n].get(side, m)
        c_lg = results[cpu_n].get("langgraph")
        c_fl = results[cpu_n].get("floor")
        before = BEFORE_CPU_MS_PER_CHAT[side]
        lg_cpu = f"; LangGraph {c_lg.cpu_ms_per_chat:.1f} ms per chat" if c_lg else ""
        lg_cpu += f"; floor {c_fl.cpu_ms_per_chat:.1f} ms per chat" if c_fl else ""
        out.append(
            figure(
                f"{cpu_n} paced chats, {LABELS[side]}: server CPU per chat",
                f"{c.server_cpu:.1f} s in all, {c.cpu_ms_per_chat:.1f} ms per chat{lg_cpu}; before the "
                f"rebuild {before} ms; at {n} chats {m.cpu_ms_per_chat:.1f} ms per chat, RSS "
                f"{m.rss_peak / 2**20:.0f} MB at peak, {m.kb_per_chat:.0f} KB per open chat",
                c.cpu_ms_per_chat / before,
                f"CPU per chat / before the rebuild ({before} ms at {CPU_N} chats)",
                at_most=0.5,
                target="<= 0.5 (half of before)",
            )
        )
        if m.redis_peak is not None:
            out.append(
                figure(
                    f"{label}: Redis connections",
                    f"{m.redis_peak} at peak with {n} open chats",
                    m.redis_peak / n,
                    "peak connections / open chats",
                    target="bounded by a constant, not by the number of streams",
                )
            )
    if fl is not None:
        # Whether a target is within reach of one Python grpc.aio process at all on this machine.
        why = "; ".join(f"{c} {w}" for w, c in fl.failures.most_common(3))
        out.append(
            figure(
                f"{n} paced chats, {LABELS['floor']}",
                f"TTFD p50 {fl.ttfd_ms(0.5):.0f} ms, p99 {fl.ttfd_ms(0.99):.0f} ms; pace {fl.pace:.1f} tokens/s; "
                f"gap p99 {fl.gap_p99_ms:.0f} ms; {fl.failed} failed"
                + (f" ({why})" if why else "")
                + f"; server CPU {fl.cpu_ms_per_chat:.1f} ms per chat",
                fl.pace / provider,
                "delivered / provider pace (mean over chats)",
                at_most=250,
                value=fl.ttfd_ms(0.99),
                target="the issue's TTFD p99 <= 250 ms (the floor's own)",
            )
        )
    return out


async def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(prog="python -m bench.chat_load", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--chats", type=int, nargs="+", default=[1, 50, 200, 500], help="concurrent chats, each N"
    )
    parser.add_argument(
        "--words", type=int, default=50, help="words per message (tokens per answer: words + 1)"
    )
    parser.add_argument(
        "--delay-ms", type=int, default=20, help="the provider's interval between tokens; 0: unpaced"
    )
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--timeout", type=float, default=120, help="each chat's deadline, seconds")
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds after the warm-up chat before the idle RSS and the CPU baseline are read",
    )
    parser.add_argument("--database-url", default="", help="the PostgreSQL `up` side's (fresh) database")
    parser.add_argument(
        "--pg-server",
        default=os.environ.get(
            "AGENTMESH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="where the fresh databases are created",
    )
    parser.add_argument("--redis-url", default="", help="accepted for `python -m bench`; not used")
    parser.add_argument(
        "--langgraph-python",
        type=pathlib.Path,
        default=pathlib.Path(
            os.environ.get("AGENTMESH_BENCH_LANGGRAPH_PYTHON", ROOT / ".venv-langgraph/bin/python")
        ),
    )
    args = parser.parse_args(argv)
    from bench.__main__ import fresh_database, own_redis

    # --delay-ms 0: echo unpaced, as bench/orchestration.py's zero-delay streams (no pace to compare).
    provider = 1000 / args.delay_ms if args.delay_ms else math.inf
    pacing = f"every {args.delay_ms} ms" if args.delay_ms else "unpaced"
    text = " ".join(f"word{i}" for i in range(args.words))
    sides = list(args.sides)
    print(
        f"chat load: {args.words}-word messages, echo {pacing} ({args.words + 1} tokens, "
        f"{provider:.0f} tokens/s), a session per chat, clients in a process of their own, deadline {args.timeout:.0f} s"
    )
    if "langgraph" in sides:
        missing = langgraph_available(args.langgraph_python)
        if missing:
            print(f"LangGraph side skipped: {missing}")
            sides.remove("langgraph")
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    results: dict[int, dict[str, Measured]] = {}
    with contextlib.ExitStack() as stack:
        workdir = pathlib.Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="agentmesh-chat-load-"))
        )
        storage = {"postgres", "services"} & set(sides)
        urls: dict[str, str] = {}
        for side in sorted(storage):
            urls[side] = (
                args.database_url
                if side == "postgres" and args.database_url
                else stack.enter_context(fresh_database(args.pg_server))
            )
        servers = Sides(
            workdir,
            delay_ms=args.delay_ms,
            tenants=math.ceil(max(args.chats) / CHATS_PER_TENANT),
            per_tenant=CHATS_PER_TENANT,
            redis_url=stack.enter_context(own_redis()) if storage else "",
            database_urls=urls,
            langgraph_python=args.langgraph_python,
        )
        for chats in args.chats:
            results[chats] = {}
            for side in sides:
                async with servers.serve(side) as running:
                    results[chats][side] = await measure(running, chats, args, text)
            for line in report(chats, list(results[chats].values()), provider):
                print(line, flush=True)
            for note in servers.notes:
                print(f"  note: {note}", flush=True)
            servers.notes.clear()
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    return figures(results, provider, args.delay_ms) if args.delay_ms else []


if __name__ == "__main__":
    asyncio.run(main())
