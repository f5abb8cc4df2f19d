"""Measures throughput and p50/p99 latency of any async call at a given concurrency, and the floor
to compare against: an empty grpc.aio handler on the same machine, in the same run.

    floor = await measure(empty_call, concurrency=16, seconds=3)
    ours = await measure(lambda: stub.GetAgent(req, metadata=md), concurrency=16, seconds=3)
    print(report("GetAgent", ours, floor))

`interleaved` measures several calls in turns, for ratios on a machine whose speed drifts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclasses.dataclass(frozen=True)
class Result:
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


async def measure(
    call: Callable[[], Awaitable[object]], *, concurrency: int = 16, seconds: float = 3.0, warmup: float = 0.5
) -> Result:
    """Runs `call` from `concurrency` workers for `seconds` (after `warmup`, at most as long as the
    measurement); every call must succeed."""
    # The smoke run's measurements are 0.1-0.3 s, whose figures mean nothing: a 0.5 s warm-up before
    # each was most of its time (conversation: 31 measurements, 21 of its 24 s). Full runs measure 1 s
    # and more, so their warm-up is unchanged.
    warmup = min(warmup, seconds)
    latencies: list[float] = []
    stop_at = 0.0

    async def worker(record: bool) -> None:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await call()
            if record:
                latencies.append(time.perf_counter() - start)

    stop_at = time.perf_counter() + warmup
    await asyncio.gather(*(worker(False) for _ in range(concurrency)))
    begin = time.perf_counter()
    stop_at = begin + seconds
    await asyncio.gather(*(worker(True) for _ in range(concurrency)))
    elapsed = time.perf_counter() - begin
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    return Result(len(ordered), elapsed, statistics.median(ordered) * 1000 if ordered else 0.0, p99 * 1000)


async def interleaved(
    calls: Mapping[str, Callable[[], Awaitable[object]]],
    *,
    concurrency: int = 16,
    seconds: float = 3.0,
    rounds: int = 3,
) -> dict[str, Result]:
    """Measures every call `rounds` times, taking turns, and keeps each one's median round (by
    throughput). The speed of a shared VM drifts by tens of percent within a minute; taking turns
    lets the drift move every side of a ratio alike."""
    results: dict[str, list[Result]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            results[name].append(await measure(call, concurrency=concurrency, seconds=seconds))
    return {name: sorted(rs, key=lambda r: r.throughput)[len(rs) // 2] for name, rs in results.items()}


class _EmptyHealth(health_pb2_grpc.HealthServicer):
    async def Check(self, request, context):  # type: ignore[no-untyped-def]
        return health_pb2.HealthCheckResponse()


async def start_child(module: str, *args: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """`python -m <module> --serve <args>`: a benchmark's server in a process of its own. Returns it
    and the words of the first line it prints (once it serves); it stops when its stdin closes."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "--serve", *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    return child, (await child.stdout.readline()).decode().split()


async def stop_children(*children: asyncio.subprocess.Process) -> None:
    """Closes each child's stdin and waits for it (10 s, then kills it)."""
    for child in children:
        if child.stdin:
            child.stdin.close()
    for child in children:
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            child.kill()
            await child.wait()


@asynccontextmanager
async def empty_server(port: int = 0, *, reuse_port: bool = False) -> AsyncIterator[int]:
    """A bare grpc.aio server (no interceptors) with one empty unary handler (health Check); yields
    its port. `reuse_port`: several processes serve the port, as `agentmesh serve --workers`."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    health_pb2_grpc.add_HealthServicer_to_server(_EmptyHealth(), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@asynccontextmanager
async def empty_handler() -> AsyncIterator[Callable[[], Awaitable[object]]]:
    """`empty_server()` in this process; yields a call to its handler."""
    async with empty_server() as port:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        try:
            yield lambda: stub.Check(request)
        finally:
            await channel.close()


def report(name: str, ours: Result, floor: Result) -> str:
    ratio = ours.throughput / floor.throughput if floor.throughput else 0.0
    return (
        f"{name:<36} {ours.throughput:9.0f} calls/s  p50 {ours.p50_ms:7.3f} ms  p99 {ours.p99_ms:7.3f} ms"
        f"  | empty handler {floor.throughput:9.0f} calls/s  p50 {floor.p50_ms:7.3f} ms"
        f"  | throughput ratio {ratio:5.2f}"
    )


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, grpcio {grpc.__version__}"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One line of docs/benchmarks.md: what was measured, the ratio against its reference measured in
    the same run, and the target the issue set (empty when it set none)."""

    name: str
    measured: str
    ratio: float | None = None
    ratio_of: str = ""
    target: str = ""
    met: bool | None = None


def figure(
    name: str,
    measured: str,
    ratio: float | None = None,
    ratio_of: str = "",
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    value: float | None = None,
    target: str = "",
) -> Figure:
    """A Figure whose target is checked here: `at_least` / `at_most` apply to `value` when given (an
    absolute target such as messages per second), else to `ratio`."""
    checked = ratio if value is None else value
    met = None
    if at_least is not None and checked is not None:
        met = checked >= at_least
        target = target or f">= {at_least:g}"
    if at_most is not None and checked is not None:
        met = checked <= at_most if met is None else met and checked <= at_most
        target = target or f"<= {at_most:g}"
    return Figure(name, measured, ratio, ratio_of, target, met)


def throughput_figure(name: str, ours: Result, floor: Result, *, at_least: float | None = None) -> Figure:
    """`ours` against the empty-handler floor: throughput ratio (p50s shown beside it)."""
    ratio = ours.throughput / floor.throughput if floor.throughput else 0.0
    return figure(
        name,
        f"{ours.throughput:,.0f} calls/s, p50 {ours.p50_ms:.2f} ms, p99 {ours.p99_ms:.2f} ms "
        f"(empty handler {floor.throughput:,.0f} calls/s, p50 {floor.p50_ms:.2f} ms)",
        ratio,
        "throughput / empty handler",
        at_least=at_least,
    )
