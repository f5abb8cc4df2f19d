"""How fast grpc.aio starts the handlers of a burst of new calls while its event loop is busy.

    python -m bench.grpc_accept [--calls 200] [--connections 8] [--iteration-ms 10] [--servers 1 4]

Why: at 200 paced chats on `agentmesh up` the SendMessage handlers of a burst sent at once start
over seconds (PostgreSQL about 4 s, embedded about 7 s, 2026-12-04), while from its handler's start
a chat's first delta comes within about 1 s (PostgreSQL) or 2 s (embedded): most of TTFD p99 is the
wait for grpc.aio to hand the call to Python. This is that wait alone, on bare grpc.aio: a Health
Watch handler that records when it starts, the client (N streams over M connections) in a process
of its own, and the server's loop kept busy by ready callbacks so that each of its iterations takes
--iteration-ms (as hundreds of streaming runs keep it), beside the same burst on an idle loop.
`--servers 4` serves the port from four grpc.aio servers in the process (SO_REUSEPORT), each with
its own accept loop, to see whether more acceptors help. The last case ("thread") is agentmesh's own
design: one server on a thread and loop of its own, relaying each call to its handler on the busy
loop (services/platform/relay.py); its starts are the handler's, on the busy loop.

It prints, per case, the spread of the handler starts (first to last, and the median) and the
milliseconds per started call, and each busy case's spread over the idle one's, same run.

Measured 2026-12-04 (grpcio 1.85.3, 2 cores, 200 calls): idle, the last handler starts 105-131 ms
after the first; with 10 ms iterations 8.5-9.7 s, about 45 ms a call, 4.5 loop iterations. It is
linear in the iteration (2.5 ms: 12 ms a call; 40 ms: 179 ms a call) and the same over 1, 8 or 50
connections, with four servers on the port (38 ms a call) and on uvloop (43 ms a call): grpc.aio
hands Python one new call per few passes of its loop, however the calls arrive. With the server on
a thread of its own (the "thread" case, agentmesh since 2026-12-04 night), the same busy burst starts
on the busy loop within 421 ms (idle: 53 ms), against 9,610 ms in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.platform.local_calls import LocalHandlers
from services.platform.relay import Relay, ServerThread

# One ready callback's work; a pass of the loop runs `iteration-ms / 0.5` of them.
_CALLBACK_SECONDS = 0.0005

_CLIENT = """
import asyncio, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

async def main(address, calls, connections):
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    for channel in channels:
        await channel.channel_ready()
    async def watch(i):
        stub = health_pb2_grpc.HealthStub(channels[i % connections])
        async for _ in stub.Watch(health_pb2.HealthCheckRequest(service=str(i)), timeout=120):
            pass
    await asyncio.gather(*(watch(i) for i in range(calls)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


class _Starts(health_pb2_grpc.HealthServicer):
    def __init__(self, starts: dict[str, float]):
        self._starts = starts

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        self._starts[request.service] = time.perf_counter()
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        await asyncio.sleep(0.2)


def _spin() -> None:
    end = time.perf_counter() + _CALLBACK_SECONDS
    while time.perf_counter() < end:
        pass


async def _keep_busy(iteration_ms: float, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    per_pass = max(1, round(iteration_ms / 1000 / _CALLBACK_SECONDS))
    while not stop.is_set():
        for _ in range(per_pass):
            loop.call_soon(_spin)
        await asyncio.sleep(0)


async def _serve(
    servicer: _Starts, *, servers: int, relayed: bool
) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Starts the servers; returns the port and how to stop them. `relayed`: one server on a
    thread of its own relaying to this loop, as agentmesh runs it (services/platform/relay.py)."""
    if relayed:
        handlers = LocalHandlers()
        handlers.bind([lambda server: health_pb2_grpc.add_HealthServicer_to_server(servicer, server)], [])
        thread = ServerThread()
        relay = Relay(handlers, main=asyncio.get_running_loop(), server=thread.loop)

        async def listen() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((relay,))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        server, port = await thread.run(listen())

        async def stop_relayed() -> None:
            await thread.run(server.stop(0))
            await thread.close()

        return port, stop_relayed
    running: list[grpc.aio.Server] = []
    port = 0
    for _ in range(servers):
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        running.append(server)

    async def stop() -> None:
        for server in running:
            await server.stop(0)

    return port, stop


async def burst(
    *, calls: int, connections: int, iteration_ms: float, servers: int, relayed: bool = False
) -> list[float]:
    """The handler starts of `calls` streams sent at once, in seconds from the first, sorted."""
    starts: dict[str, float] = {}
    port, stop_servers = await _serve(_Starts(starts), servers=servers, relayed=relayed)
    stop = asyncio.Event()
    busy = asyncio.create_task(_keep_busy(iteration_ms, stop)) if iteration_ms > 0 else None
    try:
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENT,
            f"127.0.0.1:{port}",
            str(calls),
            str(connections),
            stderr=subprocess.PIPE,
        )
        _, err = await client.communicate()
        if client.returncode != 0:
            raise RuntimeError(f"client failed: {err.decode()[-500:]}")
    finally:
        stop.set()
        if busy is not None:
            await busy
        await stop_servers()
    times = sorted(starts.values())
    return [t - times[0] for t in times]


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--iteration-ms", type=float, default=10.0)
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)
    print(
        f"grpc.aio handler starts of {args.calls} streams sent at once over {args.connections} connections"
        f" (grpcio {grpc.__version__})"
    )
    print(f"  {'loop':28} {'servers':>7} {'p50 ms':>8} {'last ms':>8} {'ms/call':>8} {'/idle':>6}")
    cases = [(servers, False) for servers in args.servers] + [(1, True)]
    for servers, relayed in cases:
        idle = 0.0
        for iteration_ms in (0.0, args.iteration_ms):
            starts = await burst(
                calls=args.calls,
                connections=args.connections,
                iteration_ms=iteration_ms,
                servers=servers,
                relayed=relayed,
            )
            last = starts[-1] * 1000
            idle = idle or last
            loop = "idle" if iteration_ms == 0 else f"busy, {iteration_ms:g} ms iterations"
            where = "thread" if relayed else str(servers)
            print(
                f"  {loop:28} {where:>7} {starts[len(starts) // 2] * 1000:8.0f} {last:8.0f}"
                f" {last / len(starts):8.1f} {last / idle:6.1f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
