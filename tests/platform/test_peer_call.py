"""peers.call, the one boundary of a peer call: all four shapes over a real grpc.aio server, failures
as the typed exception the server raised (details included), and the smallest deadline wins. Each
test runs twice: over the network, and with the server's handlers bound for local calls
(services/platform/local_calls.py: a unary call of a process to its own server runs in-process),
where the unary calls must answer, fail and time out exactly as over the network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from services.platform import errors, peers
from services.platform.error_mapping import ErrorMapping
from services.platform.interceptor import Pipeline
from services.platform.settings import TlsSettings

SERVICE = "test.Peer"
BAD = errors.InvalidArgument(
    "name is wrong", [errors.FieldViolation("name", "must not be empty")], reason="BAD"
)


def _word(value: str) -> StringValue:
    return StringValue(value=value)


class Peer:
    """Each shape answers with what it got; "fail" as a request raises BAD."""

    def __init__(self) -> None:
        self.remaining: float | None = None
        self.request_id = ""

    async def unary(
        self, request: StringValue, context: grpc.aio.ServicerContext[StringValue, StringValue]
    ) -> StringValue:
        self.remaining = context.time_remaining()
        self.request_id = dict(context.invocation_metadata() or ()).get("x-request-id", "")
        if request.value == "fail":
            raise BAD
        return _word(request.value.upper())

    async def server_stream(self, request: StringValue, context: object) -> AsyncIterator[StringValue]:
        for letter in request.value:
            if letter == "!":
                raise BAD
            yield _word(letter)

    async def client_stream(self, requests: AsyncIterator[StringValue], context: object) -> StringValue:
        words = [r.value async for r in requests]
        if "fail" in words:
            raise BAD
        return _word(" ".join(words))

    async def bidi(self, requests: AsyncIterator[StringValue], context: object) -> AsyncIterator[StringValue]:
        async for request in requests:
            if request.value == "fail":
                raise BAD
            yield _word(request.value.upper())


class Caller:
    """Serves a call and, inside it, calls the peer: what a service does."""

    def __init__(self, channel: grpc.aio.Channel):
        self.peer_unary = channel.unary_unary(
            f"/{SERVICE}/Unary",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )

    async def relay(self, request: StringValue, context: object) -> StringValue:
        reply: StringValue = await peers.call(self.peer_unary, request, timeout=30)
        return reply


def _handlers(peer: Peer, caller: Caller | None) -> grpc.GenericRpcHandler:
    kw = {
        "request_deserializer": StringValue.FromString,
        "response_serializer": StringValue.SerializeToString,
    }
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(peer.unary, **kw),
        "ServerStream": grpc.unary_stream_rpc_method_handler(peer.server_stream, **kw),
        "ClientStream": grpc.stream_unary_rpc_method_handler(peer.client_stream, **kw),
        "Bidi": grpc.stream_stream_rpc_method_handler(peer.bidi, **kw),
    }
    if caller is not None:
        handlers["Relay"] = grpc.unary_unary_rpc_method_handler(caller.relay, **kw)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class Mesh:
    def __init__(self, cap: float, *, local: bool = False):
        self.peer = Peer()
        self.channels = peers.PeerChannels(deadline_cap=cap, tls=TlsSettings())
        self.interceptors: list[grpc.aio.ServerInterceptor] = [Pipeline([ErrorMapping()])]
        self.server = grpc.aio.server(interceptors=self.interceptors)
        self.address = ""
        self.local = local

    async def start(self) -> None:
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        handlers = _handlers(self.peer, Caller(self.channels.channel(self.address)))
        self.server.add_generic_rpc_handlers((handlers,))
        if self.local:
            # What services.platform.server.Server does for its own address.
            local = self.channels.serve_locally(self.address)
            assert local is not None
            local.bind([lambda server: server.add_generic_rpc_handlers((handlers,))], self.interceptors)
        await self.server.start()

    def method(self, kind: str, name: str) -> Any:
        factory = getattr(self.channels.channel(self.address), kind)
        return factory(
            f"/{SERVICE}/{name}",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )

    async def close(self) -> None:
        await self.channels.close()
        await self.server.stop(0)


@pytest.fixture(params=["network", "local"])
async def mesh(request: pytest.FixtureRequest) -> AsyncIterator[Mesh]:
    running = Mesh(cap=2.0, local=request.param == "local")
    await running.start()
    yield running
    await running.close()


def _is_bad(exc: errors.InvalidArgument) -> None:
    assert exc.reason == "BAD"
    assert exc.message == "name is wrong"
    assert exc.violations == [errors.FieldViolation("name", "must not be empty")]


async def test_unary_answers_and_fails_typed(mesh: Mesh) -> None:
    unary = mesh.method("unary_unary", "Unary")
    assert (await peers.call(unary, _word("hi"))).value == "HI"
    with pytest.raises(errors.InvalidArgument) as caught:
        await peers.call(unary, _word("fail"))
    _is_bad(caught.value)


async def test_server_stream_iterates_and_fails_typed_mid_stream(mesh: Mesh) -> None:
    stream = mesh.method("unary_stream", "ServerStream")
    assert [r.value async for r in peers.call(stream, _word("abc"))] == ["a", "b", "c"]
    seen = []
    with pytest.raises(errors.InvalidArgument) as caught:
        async for reply in peers.call(stream, _word("ab!c")):
            seen.append(reply.value)
    assert seen == ["a", "b"]
    _is_bad(caught.value)


async def test_client_stream_from_an_iterable_or_written(mesh: Mesh) -> None:
    upload = mesh.method("stream_unary", "ClientStream")
    assert (await peers.call(upload, [_word("a"), _word("b")])).value == "a b"
    written = peers.call(upload)
    await written.write(_word("x"))
    await written.write(_word("y"))
    await written.done_writing()
    assert (await written).value == "x y"
    with pytest.raises(errors.InvalidArgument) as caught:
        await peers.call(upload, [_word("a"), _word("fail")])
    _is_bad(caught.value)


async def test_bidi_reads_what_it_writes_and_fails_typed(mesh: Mesh) -> None:
    chat = peers.call(mesh.method("stream_stream", "Bidi"))
    await chat.write(_word("one"))
    assert (await chat.read()).value == "ONE"
    await chat.write(_word("fail"))
    with pytest.raises(errors.InvalidArgument) as caught:
        await chat.read()
    _is_bad(caught.value)
    # Writing to the failed stream is the same typed failure, not a grpc error.
    with pytest.raises(errors.AgentmeshError):
        await chat.write(_word("more"))
        await chat.read()

    ended = peers.call(mesh.method("stream_stream", "Bidi"), [_word("a"), _word("b")])
    assert [r.value async for r in ended] == ["A", "B"]


async def test_unreachable_peer_is_unavailable() -> None:
    channels = peers.PeerChannels(deadline_cap=2.0, tls=TlsSettings())
    try:
        unary = channels.channel("127.0.0.1:1").unary_unary(
            f"/{SERVICE}/Unary",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )
        with pytest.raises(errors.Unavailable):
            await peers.call(unary, _word("hi"))
    finally:
        await channels.close()


async def test_the_smallest_deadline_wins(mesh: Mesh) -> None:
    unary = mesh.method("unary_unary", "Unary")
    await peers.call(unary, _word("hi"))
    assert mesh.peer.remaining is not None and 1.0 < mesh.peer.remaining < 2.1  # the cap
    await peers.call(unary, _word("hi"), timeout=0.5)
    assert mesh.peer.remaining is not None and mesh.peer.remaining < 0.6  # the code's own timeout

    # Inside a served call with 0.8 s left, the relay's own 30 s loses to the caller's deadline.
    relay = mesh.method("unary_unary", "Relay")
    await peers.call(relay, _word("hi"), timeout=0.8, metadata=[("x-request-id", "req-7")])
    assert mesh.peer.remaining is not None and mesh.peer.remaining < 0.9
    assert mesh.peer.request_id == "req-7"  # and the caller's metadata travels on


async def test_local_calls_run_in_process_until_the_server_stops() -> None:
    """Bound, a unary call answers with no server listening (it never takes the network); unbound
    (the server stopped), it takes the network and finds no one: UNAVAILABLE, as a remote peer's."""
    mesh = Mesh(cap=2.0, local=True)
    await mesh.start()
    unary = mesh.method("unary_unary", "Unary")
    await mesh.server.stop(0)
    try:
        assert (await peers.call(unary, _word("hi"))).value == "HI"
        with pytest.raises(errors.InvalidArgument) as caught:
            await peers.call(unary, _word("fail"))
        _is_bad(caught.value)
        missing = mesh.method("unary_unary", "Missing")
        with pytest.raises(errors.AgentmeshError) as unknown:
            await peers.call(missing, _word("hi"))
        assert unknown.value.code == grpc.StatusCode.UNIMPLEMENTED
        local = mesh.channels.serve_locally(mesh.address)
        assert local is not None
        local.unbind()
        with pytest.raises(errors.Unavailable):
            await peers.call(unary, _word("hi"), timeout=1)
    finally:
        await mesh.channels.close()


async def test_a_local_call_past_its_deadline_is_deadline_exceeded() -> None:
    mesh = Mesh(cap=2.0, local=True)

    async def slow(request: StringValue, context: object) -> StringValue:
        await asyncio.sleep(10)
        return request

    mesh.peer.unary = slow  # type: ignore[method-assign]  # a peer that never answers in time
    await mesh.start()
    try:
        with pytest.raises(errors.AgentmeshError) as caught:
            await peers.call(mesh.method("unary_unary", "Unary"), _word("hi"), timeout=0.2)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await mesh.close()
