"""The server thread (services/platform/relay.py): gRPC's server accepts calls on a loop of its own
and relays them to their handlers on the main loop, whatever the main loop is busy with."""

import asyncio
import threading
import time

import grpc
import pytest

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.platform.relay import WINDOW
from services.platform.server import ServiceRegistration
from tests.helpers import build_runtime, start_server

SERVICE = "agentmesh.identity.v1.IdentityService"
GET_USER = f"/{SERVICE}/GetUser"


class Passes:
    """Counts the main loop's passes (a callback that re-schedules itself every pass)."""

    def __init__(self) -> None:
        self.count = 0
        self._stopped = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.count += 1
            if not self._stopped:
                loop.call_soon(tick)

        loop.call_soon(tick)

    def stop(self) -> None:
        self._stopped = True


class Recorder(pb_grpc.IdentityServiceServicer):
    def __init__(self, passes: Passes):
        self.passes = passes
        self.started: list[int] = []
        self.loops: set[int] = set()

    async def GetUser(self, request, context):
        self.started.append(self.passes.count)
        self.loops.add(id(asyncio.get_running_loop()))
        return pb.GetUserResponse(user=pb.User(id=request.user_id))


def get_user_served_by(shape, behavior) -> ServiceRegistration:
    """IdentityService with GetUser alone, served by `behavior` as a handler of `shape` (one of
    grpc's *_rpc_method_handler functions), callable without a token."""

    def add(server) -> None:
        handler = shape(
            behavior,
            request_deserializer=pb.GetUserRequest.FromString,
            response_serializer=pb.GetUserResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"GetUser": handler}),)
        )

    return ServiceRegistration(name=SERVICE, add_to_server=add, public_methods=frozenset({GET_USER}))


def registration(servicer) -> ServiceRegistration:
    return ServiceRegistration(
        name=SERVICE,
        add_to_server=lambda server: pb_grpc.add_IdentityServiceServicer_to_server(servicer, server),
        public_methods=frozenset({GET_USER}),
    )


async def test_a_burst_sent_while_the_main_loop_is_blocked_starts_within_a_few_passes(settings):
    """grpc.aio on the main loop hands Python one new call every few passes of that loop: 40 calls
    sent while it is blocked then start over about a hundred passes. Accepted on the server thread
    meanwhile, they all start within the first passes after the block."""
    runtime = await build_runtime(settings)
    passes = Passes()
    servicer = Recorder(passes)
    running = await start_server(runtime, registration(servicer))
    warmed, blocking, sent = threading.Event(), threading.Event(), threading.Event()

    def client() -> list[str]:
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.IdentityServiceStub(channel)
            stub.GetUser(pb.GetUserRequest(user_id="warm-up"), timeout=30)
            warmed.set()
            blocking.wait(30)
            futures = [stub.GetUser.future(pb.GetUserRequest(user_id=str(i)), timeout=30) for i in range(40)]
            sent.set()
            return [f.result().user.id for f in futures]

    try:
        passes.start()
        calls = asyncio.ensure_future(asyncio.to_thread(client))
        assert await asyncio.to_thread(warmed.wait, 30)
        # From here the main loop is blocked, as a long pass would hold it, while the burst is sent.
        blocking.set()
        assert sent.wait(30)
        time.sleep(1.0)  # noqa: ASYNC251  # blocking the loop is the point
        unblocked = passes.count
        answered = await calls
        assert sorted(answered) == sorted(str(i) for i in range(40))
        burst = servicer.started[1:]
        assert len(burst) == 40
        assert max(burst) - unblocked <= 10, f"the burst started over {max(burst) - unblocked} passes"
        assert servicer.loops == {id(asyncio.get_running_loop())}  # handlers run on the main loop
    finally:
        passes.stop()
        await running.close()
        await runtime.close()


async def test_a_client_that_stops_reading_holds_back_its_stream_handler_and_its_cancel_ends_it(settings):
    """A stream handler runs ahead of the client by at most the relay's window plus what gRPC's
    flow control buffers, not without bound; the client's cancel ends the handler."""
    runtime = await build_runtime(settings)
    produced = 0
    closed = asyncio.Event()
    payload = "x" * 1024

    async def endless(request, context):
        nonlocal produced
        try:
            while True:
                produced += 1
                yield pb.GetUserResponse(user=pb.User(id=str(produced), display_name=payload))
        finally:
            closed.set()

    running = await start_server(runtime, get_user_served_by(grpc.unary_stream_rpc_method_handler, endless))
    try:
        stream = running.channel.unary_stream(
            GET_USER,
            request_serializer=pb.GetUserRequest.SerializeToString,
            response_deserializer=pb.GetUserResponse.FromString,
        )(pb.GetUserRequest(user_id="u"), timeout=30)
        first = await stream.read()
        assert first.user.id == "1"
        # The client reads no more: the handler stops once HTTP/2's windows are full. They grow
        # with gRPC's BDP probe for a while (slower on a loaded machine), so the wait is for half a
        # second without a new message, within 10 s.
        held = -1
        for _ in range(20):
            if produced == held:
                break
            held = produced
            await asyncio.sleep(0.5)
        assert produced == held, "the handler kept producing for a client that does not read"
        # HTTP/2's windows, grown by gRPC's BDP probe, hold a few thousand of these 1 KiB messages
        # (5,095 measured); without the relay's window the handler makes a hundred thousand a second.
        assert produced < 20_000 + WINDOW
        stream.cancel()
        await asyncio.wait_for(closed.wait(), 10)
    finally:
        await running.close()
        await runtime.close()


async def test_status_details_and_trailing_metadata_are_relayed(settings):
    runtime = await build_runtime(settings)

    async def fail(request, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now", (("why", "because"),))

    running = await start_server(runtime, get_user_served_by(grpc.unary_unary_rpc_method_handler, fail))
    try:
        stub = pb_grpc.IdentityServiceStub(running.channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetUser(pb.GetUserRequest(user_id="u"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert raised.value.details() == "not now"
        assert ("why", "because") in tuple(raised.value.trailing_metadata() or ())
    finally:
        await running.close()
        await runtime.close()
