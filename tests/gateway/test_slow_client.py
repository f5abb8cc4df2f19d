"""A client that stops reading, through the real gateway (uvicorn on a port) in front of the real
orchestration service (a real gRPC port, the suite's Redis; fake agents and conversation): the
gateway pulls from its gRPC call only as fast as the client takes frames, so gRPC flow control
backs up to orchestration, whose bounded reader buffer cuts the stream. The client, reading on,
gets every event up to some id and then RESOURCE_EXHAUSTED saying where to resume; resuming there
(JoinRun over HTTP, `resume` over the WebSocket) gives the rest exactly. Meanwhile another client
of the same gateway streams a run to its end. Over SSE, NDJSON and the WebSocket."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from gateway import create_app
from gateway.server import HttpServer
from services.orchestration.chat import OUT_BUFFER
from services.orchestration.models import Usage
from services.orchestration.providers import Delta, EchoProvider, Providers
from tests.gateway.fakes import Fakes

# make_mesh: the orchestration tests' fixture, imported so that pytest finds it here.
from tests.orchestration.conftest import FAST, Mesh, make_mesh  # noqa: F401

# Small, so the cut comes soon; each delta its own event, so ids count deltas. The healthy runs'
# echo is paced (a word per ECHO_DELAY): a burst of more than the buffer within one tick would cut
# even a client that reads as fast as it can.
READER_BUFFER = 64
ECHO_DELAY = 0.01
OPTIONS = dataclasses.replace(FAST, reader_buffer_events=READER_BUFFER, delta_flush_ms=0)
# Small enough that the whole answer (all produced until the cut) stays well under the 4 MiB a
# gRPC message to conversation may carry: a larger one fails the run.
DELTA_BYTES = 4096
# The stalled client's receive buffer (set before connect, so the kernel does not grow it).
CLIENT_RCVBUF = 4096
# What the pipeline from orchestration's cut reader to the stalled client may hold (256 KiB measured).
HELD_BOUND = 1 << 20
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
DELTA = "RUN_EVENT_TYPE_MESSAGE_DELTA"
TIMEOUT = 15.0


def _noise(seed: int) -> str:
    """DELTA_BYTES of text that does not compress (the WebSocket deflates its frames)."""
    return base64.b64encode(random.Random(seed).randbytes(DELTA_BYTES * 3 // 4)).decode()


class _Flood:
    """Echo, except the model `echo:flood`: distinct deltas of DELTA_BYTES, a millisecond apart,
    until `release` is set (kernel buffers, the gRPC window and uvicorn's write buffer fill fast)."""

    def __init__(self) -> None:
        self.echo = EchoProvider(delay_seconds=ECHO_DELAY)
        self.release = asyncio.Event()

    async def stream(self, config: Any, messages: Any) -> AsyncIterator[Delta]:
        if config.model != "flood":
            async for delta in self.echo.stream(config, messages):
                yield delta
            return
        n = 0
        while not self.release.is_set():
            n += 1
            yield Delta(_noise(n))
            await asyncio.sleep(0.001)
        yield Delta("end", Usage(1, n + 1))


@dataclasses.dataclass
class _Setup:
    mesh: Mesh
    flood: _Flood
    port: int
    headers: dict[str, str]
    token: str


@pytest.fixture
async def setup(
    make_mesh: Callable[..., Any],  # noqa: F811 (the imported fixture)
    serve: Callable[..., Any],
    keys: Any,
    settings: Any,
) -> AsyncIterator[_Setup]:
    flood = _Flood()
    mesh = await make_mesh(options=OPTIONS, providers=Providers({"echo": flood}))
    identity = await serve(Fakes.create(keys).registrations()[0])  # WhoAmI, for the WebSocket
    peers = dataclasses.replace(
        settings.peers, orchestration=f"127.0.0.1:{mesh.server.port}", identity=identity.address
    )
    # The gateway opens its own channels, with the options it uses in production.
    server = HttpServer(create_app(dataclasses.replace(settings, peers=peers)), host="127.0.0.1", port=0)
    port = await server.start()
    token = keys.token(tenant=mesh.tenant, sub="user-1", roles=("member",), tier="enterprise")
    try:
        yield _Setup(mesh, flood, port, {"Authorization": f"Bearer {token}"}, token)
    finally:
        flood.release.set()
        await server.stop()


async def _cut(mesh: Mesh, run_id: str) -> None:
    """Waits until orchestration has cut the run's (only) reader: its buffer overflowed because the
    gateway stopped pulling. (Reads the hub's state: there is no outside sign of a cut until the
    client reads on, and a gateway that buffered without bound would never get here.)"""
    hub: Any = mesh.orch._events
    for _ in range(int(TIMEOUT / 0.05)):
        run = hub._local.get(run_id)
        if run is not None and any(reader.cut for reader in run.readers):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"orchestration never cut the stalled reader of run {run_id}")


def _stored_answer(mesh: Mesh, conversation_id: str) -> str:
    stored = mesh.conversation.conversations[conversation_id].messages
    [answer] = [m.content for m in stored if m.role == cpb.MESSAGE_ROLE_ASSISTANT]
    return str(answer)


def _small_rcvbuf_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


# SSE and NDJSON --------------------------------------------------------------------------------


async def _events(lines: AsyncIterator[str], accept: str) -> AsyncIterator[dict[str, Any]]:
    """A server stream's events as {id?, event?, data}: SSE as sent, an NDJSON line as its `result`
    (data) or `error` (event "error")."""
    if accept != SSE:
        async for line in lines:
            if line:
                [(key, value)] = json.loads(line).items()
                yield {"data": value} if key == "result" else {"event": key, "data": value}
        return
    fields: dict[str, Any] = {}
    async for line in lines:
        if line:
            key, _, value = line.partition(": ")
            fields[key] = value
        elif fields:
            yield {**fields, "data": json.loads(fields["data"])}
            fields = {}


def _ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["data"]["eventId"]) for e in events]


def _deltas(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"].get("textDelta", "") for e in events if e["data"]["type"] == DELTA)


async def _healthy_sse_run(client: httpx.AsyncClient, headers: dict[str, str], setup: _Setup) -> None:
    """Another session's run on the same gateway, read to its end while the other client stalls."""
    session = await setup.mesh.session(model="echo:default")
    text = " ".join(f"w{i}" for i in range(100))
    reply = await client.post(
        f"/v1/sessions/{session.id}:sendMessage", json={"text": text}, headers={**headers, "Accept": SSE}
    )
    assert reply.status_code == 200, reply.text
    events = [e async for e in _events(reply.aiter_lines(), SSE)]
    assert all("eventId" in e["data"] for e in events), events[-1]
    assert _ids(events) == list(range(1, len(events) + 1))
    assert events[-1]["data"]["type"] == "RUN_EVENT_TYPE_RUN_COMPLETED", events[-1]
    assert _deltas(events) == f"Echo: {text}" == _stored_answer(setup.mesh, session.conversation_id)


@pytest.mark.parametrize("accept", [SSE, NDJSON])
async def test_a_stalled_http_client_is_cut_without_harming_others_and_resumes(
    setup: _Setup, accept: str
) -> None:
    mesh, base = setup.mesh, f"http://127.0.0.1:{setup.port}"
    session = await mesh.session(model="echo:flood")
    small = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)])
    async with (
        httpx.AsyncClient(transport=small, base_url=base, timeout=TIMEOUT) as stalled_client,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
        stalled_client.stream(
            "POST",
            f"/v1/sessions/{session.id}:sendMessage",
            json={"text": "go"},
            headers={**setup.headers, "Accept": accept},
        ) as stalled,
    ):
        assert stalled.status_code == 200
        stream = aiter(_events(stalled.aiter_lines(), accept))
        got: list[dict[str, Any]] = []
        while len([e for e in got if e["data"]["type"] == DELTA]) < 3:
            got.append(await asyncio.wait_for(anext(stream), TIMEOUT))
        run_id, stopped_at = got[0]["data"]["runId"], _ids(got)[-1]
        # The client stops reading here. Another one streams a run to its end meanwhile.
        await asyncio.wait_for(_healthy_sse_run(client, setup.headers, setup), TIMEOUT)
        await _cut(mesh, run_id)
        setup.flood.release.set()

        # Reading on (with room, so the held events come quickly): every event the pipeline held,
        # in order, then the cut.
        stalled.extensions["network_stream"].get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20
        )
        while True:
            event = await asyncio.wait_for(anext(stream), TIMEOUT)
            if event.get("event") == "error":
                error = event["data"]
                break
            got.append(event)
        last = _ids(got)[-1]
        assert _ids(got) == list(range(1, last + 1))
        assert error["status"] == "RESOURCE_EXHAUSTED", error
        assert f"resume with JoinRun after event {last}" in error["message"], error
        [info] = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
        assert info["reason"] == "SLOW_READER"
        assert info["metadata"] == {"run_id": run_id, "last_event_id": str(last)}
        held = last - stopped_at
        print(f"held for the stalled {accept} client: {held} events, {held * DELTA_BYTES >> 10} KiB")
        # Bounded by the buffers on the way (the gRPC window, uvicorn's, the kernel's unsent bytes),
        # not by how long the client stalls: 8 MiB before their bounds (BDP probing, TCP_NOTSENT_LOWAT).
        assert held * DELTA_BYTES < HELD_BOUND, held

        # JoinRun from there: the rest, exactly.
        joined = await client.get(
            f"/v1/runs/{run_id}:join", headers={**setup.headers, "Accept": accept, "Last-Event-ID": str(last)}
        )
        assert joined.status_code == 200, joined.text
        rest = [e async for e in _events(joined.aiter_lines(), accept)]
    assert _ids(rest) == list(range(last + 1, last + 1 + len(rest)))
    assert rest[-1]["data"]["type"] == "RUN_EVENT_TYPE_RUN_COMPLETED", rest[-1]["data"].get("error")
    assert _deltas(got) + _deltas(rest) == _stored_answer(mesh, session.conversation_id)


# WebSocket -------------------------------------------------------------------------------------


async def _recv(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return message


def _frame_deltas(frames: list[dict[str, Any]]) -> str:
    return "".join(f.get("delta", "") for f in frames if f["type"] == "agent_response")


async def _open(setup: _Setup, **kw: Any) -> Any:
    ws = await connect(
        f"ws://127.0.0.1:{setup.port}/v1/ws",
        subprotocols=["agentmesh.v1", f"bearer.{setup.token}"],  # type: ignore[list-item]
        max_size=None,
        **kw,
    )
    assert (await _recv(ws))["event"] == "connected"
    return ws


async def _healthy_ws_run(setup: _Setup) -> None:
    session = await setup.mesh.session(model="echo:default")
    text = " ".join(f"w{i}" for i in range(100))
    async with await _open(setup) as ws:
        await ws.send(json.dumps({"type": "chat_message", "session_id": session.id, "content": text}))
        frames = [await _recv(ws)]
        while frames[-1].get("event") != "run_completed":
            frames.append(await _recv(ws))
    assert [f["event_id"] for f in frames] == list(range(1, len(frames) + 1))
    assert _frame_deltas(frames) == f"Echo: {text}" == _stored_answer(setup.mesh, session.conversation_id)


async def test_a_stalled_websocket_client_is_cut_without_harming_others_and_resumes(
    setup: _Setup,
) -> None:
    mesh = setup.mesh
    session = await mesh.session(model="echo:flood")
    # The client library stops reading its socket once `max_queue` frames wait unread.
    ws = await _open(setup, sock=_small_rcvbuf_socket(setup.port), max_queue=4)
    async with ws:
        await ws.send(json.dumps({"type": "chat_message", "session_id": session.id, "content": "go"}))
        got = [await _recv(ws)]
        while len([f for f in got if "delta" in f]) < 3:
            got.append(await _recv(ws))
        run_id, stopped_at = got[0]["run_id"], got[-1]["event_id"]
        # The client stops reading here. Another one streams a run to its end meanwhile.
        await asyncio.wait_for(_healthy_ws_run(setup), TIMEOUT)
        await _cut(mesh, run_id)
        setup.flood.release.set()

        while True:
            frame = await _recv(ws)
            if frame["type"] == "error":
                error = frame
                break
            got.append(frame)
        last = got[-1]["event_id"]
        assert [f["event_id"] for f in got] == list(range(1, last + 1))
        assert {f["run_id"] for f in got} == {run_id}
        assert error["error_code"] == "RESOURCE_EXHAUSTED", error
        assert f"after event {last}" in error["error_message"], error
        [info] = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
        assert info["reason"] == "SLOW_READER"
        assert info["metadata"] == {"run_id": run_id, "last_event_id": str(last)}
        held = last - stopped_at
        print(f"held for the stalled WebSocket client: {held} events, {held * DELTA_BYTES >> 10} KiB")
        # The same bound, plus what orchestration's Chat stream queues for its client.
        assert held * DELTA_BYTES < HELD_BOUND + OUT_BUFFER * DELTA_BYTES, held

        # The socket stays open; `resume` from the last event id gives the rest on it, exactly.
        resume = {"type": "resume", "session_id": session.id, "run_id": run_id, "after_event_id": last}
        await ws.send(json.dumps(resume))
        rest = [await _recv(ws)]
        while rest[-1].get("event") != "run_completed":
            rest.append(await _recv(ws))
    assert [f["event_id"] for f in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert _frame_deltas(got) + _frame_deltas(rest) == _stored_answer(mesh, session.conversation_id)
