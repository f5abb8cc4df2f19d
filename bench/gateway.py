"""Gateway benchmark: the same unary RPC through the gateway (HTTP/JSON on a uvicorn port) and
directly over gRPC, in one run; the gateway with one worker and with two (two processes on one
SO_REUSEPORT port, as `agentmesh serve gateway --workers 2` runs them) against the bare Python hop; WebSocket time to first delta and events per second with a
zero-delay stream; RSS of the gateway process, and of `agentmesh up`, idle and with N open WebSockets.

As in production, the fake upstreams and the gateway are two processes, and the client a third, so
neither the client's work nor its memory is counted against them. The HTTP client is a minimal
keep-alive HTTP/1.1 client (`_KeepAlive`): httpx costs more per call than the gateway itself (its
figure is printed beside), and what is measured is the gateway, not a client library. The WebSocket
figures stand next to the same Chat stream read over gRPC directly from the same fake upstream.

    python -m bench.gateway [--seconds 2] [--concurrency 8] [--sockets 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
import httpx

from agentmesh.identity.v1 import identity_service_pb2 as identity_pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as identity_grpc
from agentmesh.orchestration.v1 import orchestration_service_pb2 as orch_pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as orch_grpc
from bench.harness import Figure, figure, interleaved, machine, measure, start_child, stop_children
from tests.helpers import free_port

DELTAS = 2000


class _Identity(identity_grpc.IdentityServiceServicer):
    async def GetJwks(self, request, context):  # type: ignore[no-untyped-def]
        return identity_pb.GetJwksResponse(
            keys=[identity_pb.JsonWebKey(kty="OKP", crv="Ed25519", x="abc", kid="k1")]
        )

    async def WhoAmI(self, request, context):  # type: ignore[no-untyped-def]
        return identity_pb.WhoAmIResponse(user=identity_pb.User(id="bench"))


class _Orchestration(orch_grpc.OrchestrationServiceServicer):
    """Chat at zero delay: each message is a run of RUN_STARTED, n deltas, completion."""

    async def Chat(self, request_iterator, context):  # type: ignore[no-untyped-def]
        T = orch_pb.RunEventType
        async for req in request_iterator:
            n = int(req.message.text or "1")
            run = f"run-{time.monotonic_ns()}"
            yield orch_pb.ChatResponse(
                run_event=orch_pb.RunEvent(event_id=1, run_id=run, type=T.RUN_EVENT_TYPE_RUN_STARTED)
            )
            for i in range(n):
                ev = orch_pb.RunEvent(
                    event_id=i + 2, run_id=run, type=T.RUN_EVENT_TYPE_MESSAGE_DELTA, text_delta="tok "
                )
                yield orch_pb.ChatResponse(run_event=ev)
            done = orch_pb.RunEvent(event_id=n + 2, run_id=run, type=T.RUN_EVENT_TYPE_RUN_COMPLETED)
            yield orch_pb.ChatResponse(run_event=done)


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve_upstream() -> None:
    """Child process: the fake upstreams on a gRPC port."""
    server = grpc.aio.server()
    identity_grpc.add_IdentityServiceServicer_to_server(_Identity(), server)
    orch_grpc.add_OrchestrationServiceServicer_to_server(_Orchestration(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    await server.stop(0)


async def _serve_gateway(upstream_port: int, port: int = 0) -> None:
    """Child process: the gateway on an HTTP port, in front of the fake upstreams; with `port`, one
    worker of several sharing it (SO_REUSEPORT, as `serve gateway --workers N`)."""
    from gateway import create_app
    from gateway.server import HttpServer
    from gateway.websocket import Limits
    from services.platform.settings import Settings

    _raise_fd_limit()
    settings = Settings.from_env({}).embedded_defaults()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{upstream_port}")
    limits = Limits(connections_per_user=100_000, max_connections=100_000, messages_per_minute=100_000)
    app = create_app(settings, channels={"*": channel}, limits=limits)
    http = HttpServer(app, host="127.0.0.1", port=port, reuse_port=bool(port))
    print(f"PORT {await http.start()}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await http.stop()


async def _serve_bare_hop(upstream_port: int) -> None:
    """Child process: the least a Python HTTP-to-gRPC hop can do, as a floor for the gateway: uvicorn
    (as the gateway runs it) and a bare ASGI function that calls GetJwks with grpc.aio and answers
    its proto3 JSON; no routing, headers, errors, tracing or limits."""
    import uvicorn
    from google.protobuf import json_format

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{upstream_port}")
    stub = identity_grpc.IdentityServiceStub(channel)

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        reply = await stub.GetJwks(identity_pb.GetJwksRequest(), timeout=30)
        body = json.dumps(json_format.MessageToDict(reply)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise OSError("the bare hop stopped while starting")
        await asyncio.sleep(0.01)
    print(f"PORT {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.should_exit = True
    await task


class _KeepAlive:
    """GET over a pool of keep-alive HTTP/1.1 connections (one per concurrent caller), reading
    Content-Length bodies: what a browser's HTTP stack does, at a cost small next to the gateway's."""

    def __init__(self, port: int):
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> bytes:
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            if not reused:
                raise
            # The server closed the idle connection (keep-alive timeout): a new one, as browsers do.
            writer.close()
            return await self.get(path)
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status} {body[:200]!r}")
        self._idle.append(conn)
        return body

    def close(self) -> None:
        for _reader, writer in self._idle:
            writer.close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _ws_first_delta_and_rate(port: int, runs: int) -> tuple[list[float], float]:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["agentmesh.v1", "bearer.x"]) as ws:
        await ws.recv()  # connected
        firsts = []
        for _ in range(runs):
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "chat_message", "session_id": "s", "content": "5"}))
            first = None
            while True:
                m = json.loads(await ws.recv())
                if first is None and "delta" in m:
                    first = time.perf_counter() - start
                if m.get("event") == "run_completed":
                    break
            firsts.append(first or 0.0)
        start = time.perf_counter()
        await ws.send(json.dumps({"type": "chat_message", "session_id": "s", "content": str(DELTAS)}))
        count = 0
        while True:
            m = json.loads(await ws.recv())
            count += 1
            if m.get("event") == "run_completed":
                break
        rate = count / (time.perf_counter() - start)
    return firsts, rate


async def _grpc_first_delta_and_rate(
    stub: orch_grpc.OrchestrationServiceStub, runs: int
) -> tuple[list[float], float]:
    """The same Chat runs as over the WebSocket, read from the fake upstream directly."""
    T = orch_pb.RunEventType

    async def one(n: int) -> tuple[float, int, float]:
        start = time.perf_counter()
        first, count = 0.0, 0
        call = stub.Chat(
            iter([orch_pb.ChatRequest(session_id="s", message=orch_pb.ChatMessage(text=str(n)))])
        )
        async for reply in call:
            count += 1
            if not first and reply.run_event.type == T.RUN_EVENT_TYPE_MESSAGE_DELTA:
                first = time.perf_counter() - start
            if reply.run_event.type == T.RUN_EVENT_TYPE_RUN_COMPLETED:
                call.cancel()
                break
        return first, count, time.perf_counter() - start

    firsts = [(await one(5))[0] for _ in range(runs)]
    _, count, elapsed = await one(DELTAS)
    return firsts, count / elapsed


async def _open_sockets(port: int, n: int, token: str = "x") -> list[object]:
    from websockets.asyncio.client import connect

    sockets: list[object] = []
    sem = asyncio.Semaphore(50)

    async def one() -> None:
        async with sem:
            ws = await connect(
                f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["agentmesh.v1", f"bearer.{token}"]
            )
            hello = json.loads(await ws.recv())
            if hello.get("event") != "connected":
                raise RuntimeError(f"WebSocket refused: {hello}")
            sockets.append(ws)

    await asyncio.gather(*(one() for _ in range(n)))
    return sockets


async def _agentmesh_up_memory(sockets: int) -> Figure:
    """`agentmesh up` (every service and the gateway in one process, on its embedded storage) idle,
    then with `sockets` WebSockets open as the demo user_1."""
    grpc_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(AGENTMESH_WS_CONNECTIONS_PER_USER=str(sockets + 10), AGENTMESH_LOG_LEVEL="WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-up-") as data_dir:
        up = await asyncio.create_subprocess_exec(
            str(pathlib.Path(sys.executable).parent / "agentmesh"), "up", "--grpc-port", str(grpc_port),
            "--http-port", str(http_port), "--data-dir", data_dir,
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as http:
                for _ in range(600):
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
                login = await http.post(
                    "/v1/identity:login", json={"tenant": "demo", "username": "user_1", "password": "1234"}
                )
                login.raise_for_status()
                token = login.json()["tokens"]["accessToken"]
            idle = _rss_mb(up.pid)
            opened = await _open_sockets(http_port, sockets, token)
            await asyncio.sleep(0.5)
            busy = _rss_mb(up.pid)
            for ws in opened:
                await ws.close()  # type: ignore[attr-defined]
        finally:
            up.terminate()
            await up.wait()
    per_socket = (busy - idle) * 1024 / max(1, len(opened))
    print(
        f"RSS of agentmesh up: idle {idle:.1f} MB, with {len(opened)} open WebSockets {busy:.1f} MB"
        f" ({per_socket:.1f} KB per socket)"
    )
    return figure(
        f"RSS of `agentmesh up` (all services and the gateway), idle against {len(opened):,} open WebSockets",
        f"idle {idle:.1f} MB; with {len(opened):,} sockets {busy:.1f} MB ({per_socket:.1f} KB per socket)",
        busy / idle,
        "RSS with sockets / idle",
    )


async def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per side of the unary figures, in turns"
    )
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        if args.serve[0] == "upstream":
            await _serve_upstream()
        elif args.serve[0] == "bare":
            await _serve_bare_hop(int(args.serve[1]))
        else:
            await _serve_gateway(int(args.serve[1]), *(int(p) for p in args.serve[2:]))
        return []
    figures: list[Figure] = []
    _raise_fd_limit()
    upstream, (_, grpc_address) = await start_child("bench.gateway", "upstream")
    pair_port = free_port()
    # Started together: each is seconds of imports, and they need nothing of each other.
    (gateway, (_, http_address)), (bare, (_, bare_address)), *paired = await asyncio.gather(
        start_child("bench.gateway", "gateway", grpc_address),
        start_child("bench.gateway", "bare", grpc_address),
        *(start_child("bench.gateway", "gateway", grpc_address, str(pair_port)) for _ in range(2)),
    )
    pair = [child for child, _ in paired]
    grpc_port, http_port = int(grpc_address), int(http_address)
    try:
        print(f"gateway benchmark on {machine()}")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = identity_grpc.IdentityServiceStub(channel)
        request = identity_pb.GetJwksRequest()
        client, bare_client = _KeepAlive(http_port), _KeepAlive(int(bare_address))
        pair_client = _KeepAlive(pair_port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:

            async def via_httpx() -> object:
                r = await http.get("/v1/identity/jwks")
                r.raise_for_status()
                return r

            for concurrency in (1, args.concurrency):
                measured = await interleaved(
                    {
                        "floor": lambda: client.get("/healthz"),
                        "direct": lambda: stub.GetJwks(request),
                        "gateway": lambda: client.get("/v1/identity/jwks"),
                        "bare": lambda: bare_client.get("/v1/identity/jwks"),
                        "two": lambda: pair_client.get("/v1/identity/jwks"),
                    },
                    concurrency=concurrency,
                    seconds=args.seconds,
                    rounds=args.rounds,
                )
                empty, direct, gw, hop, two = (
                    measured[k] for k in ("floor", "direct", "gateway", "bare", "two")
                )
                slow = await measure(via_httpx, concurrency=concurrency, seconds=args.seconds)
                print(
                    f"GetJwks concurrency {concurrency:>2}: direct gRPC {direct.throughput:8.0f}/s p50 {direct.p50_ms:6.3f} ms"
                    f" | gateway {gw.throughput:8.0f}/s p50 {gw.p50_ms:6.3f} ms"
                    f" | p50 ratio {gw.p50_ms / direct.p50_ms:5.2f}x (target <= 1.5x)"
                    f" | throughput ratio {gw.throughput / direct.throughput:5.2f}"
                    f" | bare Python hop p50 {hop.p50_ms:6.3f} ms ({hop.p50_ms / direct.p50_ms:4.2f}x)"
                    f" | HTTP floor (/healthz, no gRPC) p50 {empty.p50_ms:6.3f} ms"
                    f" | gateway with an httpx client p50 {slow.p50_ms:6.3f} ms"
                    f" | gateway 2 workers {two.throughput:8.0f}/s p50 {two.p50_ms:6.3f} ms"
                )
                figures.append(
                    figure(
                        f"unary GetJwks through the gateway against direct gRPC (c={concurrency})",
                        f"gateway p50 {gw.p50_ms:.2f} ms {gw.throughput:,.0f}/s; direct p50 {direct.p50_ms:.2f} ms "
                        f"{direct.throughput:,.0f}/s (throughput ratio {gw.throughput / direct.throughput:.2f}); "
                        f"HTTP floor /healthz p50 {empty.p50_ms:.2f} ms; with an httpx client instead "
                        f"p50 {slow.p50_ms:.2f} ms",
                        gw.p50_ms / direct.p50_ms,
                        "p50 gateway / direct",
                        at_most=1.5,
                    )
                )
                figures.append(
                    figure(
                        f"the least a Python HTTP-to-gRPC hop costs, against direct gRPC (c={concurrency})",
                        f"bare hop (uvicorn + one ASGI function + grpc.aio + json_format) p50 "
                        f"{hop.p50_ms:.2f} ms {hop.throughput:,.0f}/s; the gateway is {gw.p50_ms / hop.p50_ms:.2f}x it",
                        hop.p50_ms / direct.p50_ms,
                        "p50 bare hop / direct",
                    )
                )
                figures.append(
                    figure(
                        f"the gateway's own cost: gateway p50 against the bare Python hop p50 (c={concurrency})",
                        f"gateway (1 worker) p50 {gw.p50_ms:.2f} ms {gw.throughput:,.0f}/s; bare hop p50 "
                        f"{hop.p50_ms:.2f} ms {hop.throughput:,.0f}/s",
                        gw.p50_ms / hop.p50_ms,
                        "p50 gateway / bare hop",
                        at_most=1.2,
                    )
                )
                figures.append(
                    figure(
                        f"gateway throughput, 2 workers against 1 (c={concurrency}, {os.cpu_count()} cores)",
                        f"2 workers {two.throughput:,.0f}/s p50 {two.p50_ms:.2f} ms; 1 worker "
                        f"{gw.throughput:,.0f}/s p50 {gw.p50_ms:.2f} ms; bare hop (1 process) "
                        f"{hop.throughput:,.0f}/s; 2 workers / bare hop {two.throughput / hop.throughput:.2f}",
                        two.throughput / gw.throughput,
                        "throughput 2 workers / 1 worker",
                    )
                )
        client.close()
        bare_client.close()
        pair_client.close()
        grpc_firsts, grpc_rate = await _grpc_first_delta_and_rate(
            orch_grpc.OrchestrationServiceStub(channel), args.runs
        )
        await channel.close()
        firsts, rate = await _ws_first_delta_and_rate(http_port, args.runs)
        ordered = sorted(firsts)
        print(
            f"WebSocket time to first delta: p50 {statistics.median(ordered) * 1000:.3f} ms,"
            f" p99 {ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000:.3f} ms ({len(ordered)} runs)"
        )
        print(f"WebSocket events per second, one stream of {DELTAS + 2} events: {rate:,.0f}")
        ws_p50, grpc_p50 = statistics.median(ordered), statistics.median(grpc_firsts)
        figures.append(
            figure(
                "WebSocket time to first delta against the same Chat stream over gRPC directly",
                f"WebSocket p50 {ws_p50 * 1000:.2f} ms, p99 "
                f"{ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000:.2f} ms; "
                f"gRPC directly p50 {grpc_p50 * 1000:.2f} ms ({len(ordered)} runs, zero-delay stream)",
                ws_p50 / grpc_p50,
                "p50 WebSocket / gRPC directly",
            )
        )
        figures.append(
            figure(
                f"WebSocket events per second, one stream of {DELTAS + 2} events",
                f"WebSocket {rate:,.0f} events/s; gRPC directly {grpc_rate:,.0f} events/s",
                rate / grpc_rate,
                "events/s WebSocket / gRPC directly",
            )
        )
        idle = _rss_mb(gateway.pid)
        sockets = await _open_sockets(http_port, args.sockets)
        await asyncio.sleep(0.5)
        busy = _rss_mb(gateway.pid)
        print(
            f"RSS of the gateway process: idle {idle:.1f} MB, with {len(sockets)} open WebSockets {busy:.1f} MB"
            f" ({(busy - idle) * 1024 / max(1, len(sockets)):.1f} KB per socket)"
        )
        figures.append(
            figure(
                f"RSS of the gateway process, idle against {len(sockets):,} open WebSockets",
                f"idle {idle:.1f} MB; with {len(sockets):,} sockets {busy:.1f} MB "
                f"({(busy - idle) * 1024 / max(1, len(sockets)):.1f} KB per socket)",
                busy / idle,
                "RSS with sockets / idle",
            )
        )
        for ws in sockets:
            await ws.close()  # type: ignore[attr-defined]
    finally:
        await stop_children(gateway, bare, *pair, upstream)
    figures.append(await _agentmesh_up_memory(args.sockets))
    return figures


if __name__ == "__main__":
    asyncio.run(main())
