"""`agentmesh serve gateway --workers 2` as a real subprocess in front of the fake upstreams on a real
gRPC port, with the suite's own Redis: both workers accept WebSockets on the one port (which worker
holds a socket is read from /proc: the worker process owning the server end of the TCP connection),
the per-user limit counts the sockets of both workers together, and the slots of a SIGKILLed worker
free themselves once their lease lapses while the survivor keeps renewing its own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.embedded import BIN
from tests.helpers import REDIS_MODE, free_port
from tests.test_cli_production import clean_env

LIMIT = 4
LEASE_SECONDS = 3.0


class Gateway:
    """The parent process of `serve gateway --workers 2`, its HTTP port and its two workers."""

    def __init__(self, proc: subprocess.Popen[str], port: int):
        self.proc, self.port = proc, port
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        self.workers = [int(pid) for pid in children]

    def worker_of(self, ws: ClientConnection) -> int:
        """The worker holding the server end of `ws`: the inode of the TCP connection from the
        client's port to the gateway's, among each worker's open file descriptors."""
        client_port = ws.local_address[1]
        inode = ""
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == self.port and int(remote.split(":")[1], 16) == client_port:
                inode = fields[9]
        assert inode, f"no server socket for client port {client_port}"
        for pid in self.workers:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
                except FileNotFoundError:
                    continue
        raise AssertionError(f"no worker holds socket inode {inode}")


@pytest.fixture
async def gateway(upstream: Any, redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[[], Gateway]]:
    port = free_port()
    env = clean_env(
        REDIS_URL=redis_url,
        AGENTMESH_REDIS_MODE=REDIS_MODE,
        AGENTMESH_HTTP_PORT=str(port),
        AGENTMESH_WS_CONNECTIONS_PER_USER=str(LIMIT),
        AGENTMESH_WS_LEASE_SECONDS=str(LEASE_SECONDS),
        AGENTMESH_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        **{
            f"AGENTMESH_{peer}_ADDR": upstream.address
            for peer in ("IDENTITY", "AGENTS", "CONVERSATION", "ORCHESTRATION")
        },
    )
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen(  # noqa: ASYNC220 -- started once; its lines are read in a thread
        [str(BIN / "agentmesh"), "serve", "gateway", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [await asyncio.to_thread(proc.stdout.readline) for _ in range(2)]
        assert all("gateway serving HTTP" in line for line in lines), (
            lines,
            (tmp_path / "gateway.log").read_text()[-3000:],
        )
        yield lambda: Gateway(proc, port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
            log.close()


def listeners(port: int) -> int:
    """Sockets listening on `port` (TCP state 0A), whoever holds them."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for r in rows if int(r[1].split(":")[1], 16) == port and r[3] == "0A")


async def open_socket(port: int, token: str) -> ClientConnection | None:
    """A socket the gateway accepted (`connected`), or None when it refused it for the user's limit
    (RESOURCE_EXHAUSTED, then close 4429)."""
    ws = await connect(f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["agentmesh.v1", f"bearer.{token}"])  # type: ignore[list-item]
    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if first.get("event") == "connected":
        return ws
    assert first["error_code"] == "RESOURCE_EXHAUSTED", first
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
    return None


async def two_on_each(gw: Gateway, token: str) -> dict[int, list[ClientConnection]]:
    """LIMIT sockets of one user, two held by each worker (others opened on the way are closed)."""
    held: dict[int, list[ClientConnection]] = {pid: [] for pid in gw.workers}
    for _ in range(60):
        if all(len(v) == 2 for v in held.values()):
            return held
        ws = await open_socket(gw.port, token)
        if ws is None:
            # A socket just closed below may not have given its slot back yet.
            await asyncio.sleep(0.1)
            continue
        pid = gw.worker_of(ws)
        if len(held[pid]) < 2:
            held[pid].append(ws)
        else:
            await ws.close()
    raise AssertionError(f"connections did not spread over both workers: {[len(v) for v in held.values()]}")


async def test_workers_share_the_port_and_the_per_user_limit(
    gateway: Callable[[], Gateway], keys: Any
) -> None:
    gw = gateway()
    assert len(gw.workers) == 2
    assert listeners(gw.port) == 2
    token = keys.token(tenant="demo", sub=f"workers-{uuid.uuid4().hex[:8]}")
    held = await two_on_each(gw, token)
    # Each worker holds 2 < LIMIT: a count per process would let every one of these in.
    for _ in range(6):
        assert await open_socket(gw.port, token) is None
    # Another user is not affected.
    other = await open_socket(gw.port, keys.token(tenant="demo", sub=f"other-{uuid.uuid4().hex[:8]}"))
    assert other is not None
    await other.close()
    # A socket closed on either worker gives its slot back to the user.
    await held[gw.workers[0]].pop().close()
    again = None
    for _ in range(20):
        again = await open_socket(gw.port, token)
        if again is not None:
            break
        await asyncio.sleep(0.1)
    assert again is not None
    assert await open_socket(gw.port, token) is None
    for ws in [again, *(w for sockets in held.values() for w in sockets)]:
        await ws.close()


async def test_a_killed_workers_slots_are_freed_after_the_lease(
    gateway: Callable[[], Gateway], keys: Any
) -> None:
    gw = gateway()
    token = keys.token(tenant="demo", sub=f"killed-{uuid.uuid4().hex[:8]}")
    held = await two_on_each(gw, token)
    dead, alive = gw.workers
    os.kill(dead, signal.SIGKILL)
    killed_at = time.monotonic()
    # Until the kernel has closed its listening socket (once every thread of the process is gone,
    # later than the process turns zombie), a new connection may still land there.
    for _ in range(1000):
        if listeners(gw.port) == 1:
            break
        await asyncio.sleep(0.01)
    # The dead worker's sockets never closed: their slots count until the lease lapses.
    assert await open_socket(gw.port, token) is None
    # Before the earliest lapse (a renewal at most a third of the lease before the kill).
    assert time.monotonic() - killed_at < LEASE_SECONDS / 2, "too slow to see the slots still held"
    admitted: list[ClientConnection] = []
    deadline = killed_at + LEASE_SECONDS * 3
    while len(admitted) < 2 and time.monotonic() < deadline:
        ws = await open_socket(gw.port, token)
        if ws is None:
            await asyncio.sleep(0.2)
        else:
            admitted.append(ws)
    assert len(admitted) == 2, "the killed worker's two slots were not freed"
    assert time.monotonic() - killed_at > LEASE_SECONDS / 3
    # Well past the lease, the survivor's own two sockets still count: it renews them.
    await asyncio.sleep(max(0.0, killed_at + LEASE_SECONDS * 1.5 - time.monotonic()))
    assert await open_socket(gw.port, token) is None
    for ws in held[alive]:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
    for ws in [*admitted, *held[alive], *held[dead]]:
        await ws.close()
