"""Unary calls to a service of this very process, without the loopback network.

`agentmesh up` (and `serve` with several services in one process) runs every service on one server,
and orchestration's peer calls (the quota check, the user message and the answer appended, the
context read) went out through the loopback and back in through that same server: both sides of a
gRPC call in one process, queued behind the clients' calls in gRPC's server, and refused once the
server drains at shutdown while runs still store their answers.

Here a unary call to an address this process serves runs the server's own handler, its
interceptors included (the middleware chain: logs, metrics, error mapping, authentication, request
checks), in a task of its own with a context of its own, as the server would. The request and the
response still go through their serializers, so neither side holds the other's objects, and a
failure is the `grpc.aio.AioRpcError` the network gives (code, details, the status details in its
trailers): `peers.call` and all above it see no difference. Streams, and every call of a process
that exports traces (its server spans come from the interceptor on the network path), keep the
network channel.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any, cast

import grpc

Forward = Callable[[grpc.aio.Metadata, float | None], tuple[grpc.aio.Metadata, float]]


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str):
        self.method = method
        self.invocation_metadata = ()


class LocalHandlers:
    """The method handlers of the server at one address, with its interceptors applied; filled by
    the server (services.platform.server.Server) when it is built at that address."""

    def __init__(self) -> None:
        self._generic: list[grpc.GenericRpcHandler] = []
        self._interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}
        self.bound = False

    # What a generated add_*Servicer_to_server calls on a server.
    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic += handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        pass  # the same handlers as the generic one's, for gRPC's own method lookup

    def bind(
        self,
        adds: Iterable[Callable[[grpc.aio.Server], None]],
        interceptors: Sequence[grpc.aio.ServerInterceptor],
    ) -> None:
        """The services a server built at this address adds (`ServiceRegistration.add_to_server`),
        run through its interceptors; what an earlier server here added is dropped."""
        self.unbind()
        for add in adds:
            add(cast(grpc.aio.Server, self))  # the two methods the generated code calls are here
        self._interceptors = interceptors
        self.bound = True

    def unbind(self) -> None:
        """The server stopped (or another is built at the address): calls take the network."""
        self._generic, self._wrapped, self.bound = [], {}, False

    def servicer_handler(self, method: str) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The method's handler as the servicer gave it, without the interceptors."""
        details = _Details(method)
        for generic in self._generic:
            found = generic.service(details)
            if found is not None:
                return found
        return None

    async def handler(self, method: str) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The method's handler as the server runs it. The chain is built once per method: the
        interceptors wrap by method name alone (the Pipeline reads a call's metadata per call)."""
        if method in self._wrapped:
            return self._wrapped[method]

        async def find(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
            return self.servicer_handler(details.method)

        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]] = find
        for interceptor in reversed(self._interceptors):
            continuation = functools.partial(interceptor.intercept_service, continuation)
        wrapped: grpc.RpcMethodHandler[Any, Any] | None = await continuation(_Details(method))
        self._wrapped[method] = wrapped
        return wrapped


class HandlerContext:
    """What a handler sees of its call (the grpc.aio.ServicerContext methods the server's handlers
    use): the metadata, the deadline, the peer, and where its status goes. code() is None before a
    status, as grpc.aio's is (its type stubs say otherwise: the middlewares read None as a cancel).
    `on_headers` takes a stream's early initial metadata, `on_write` the messages of a handler that
    writes its response stream with `write` (services.platform.relay)."""

    def __init__(
        self,
        metadata: Iterable[tuple[str, str | bytes]],
        deadline: float | None,
        *,
        peer: str = "local",
        on_headers: Callable[[Any], None] | None = None,
        on_write: Callable[[Any], Awaitable[None]] | None = None,
    ):
        self._metadata = tuple(metadata)
        self._deadline = deadline
        self._peer = peer
        self._on_headers = on_headers
        self._on_write = on_write
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()

    def failure(self) -> grpc.aio.AioRpcError | None:
        if self._code is None or self._code == grpc.StatusCode.OK:
            return None
        return grpc.aio.AioRpcError(
            self._code, grpc.aio.Metadata(), grpc.aio.Metadata(*self._trailing), self._details
        )

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = tuple()) -> Any:
        self._code, self._details = code, details
        self._trailing = tuple(trailing_metadata or ())
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> Any:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing

    def invocation_metadata(self) -> Any:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> Any:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Any:
        return {}

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        if self._on_headers is not None:
            self._on_headers(initial_metadata)

    async def read(self) -> Any:
        raise grpc.aio.UsageError("a unary call has no request stream")

    async def write(self, message: Any) -> None:
        if self._on_write is None:
            raise grpc.aio.UsageError("this call has no response stream to write to")
        await self._on_write(message)

    def set_compression(self, compression: grpc.Compression) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def _invoke(
    handlers: LocalHandlers,
    method: str,
    request: bytes,
    metadata: grpc.aio.Metadata,
    deadline: float,
    deserialize: Callable[[bytes], Any] | None,
) -> Any:
    handler = await handlers.handler(method)
    if handler is None or handler.unary_unary is None:
        raise _error(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    context = HandlerContext(metadata, deadline)
    message = handler.request_deserializer(request) if handler.request_deserializer else request
    limit = asyncio.timeout(max(0.0, deadline - time.monotonic()))
    try:
        async with limit:
            response = await handler.unary_unary(message, cast(grpc.ServicerContext, context))
    except grpc.aio.AbortError:
        raise context.failure() or _error(grpc.StatusCode.UNKNOWN, "aborted") from None
    except TimeoutError:
        if limit.expired():
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        raise _error(grpc.StatusCode.UNKNOWN, "Unexpected <class 'TimeoutError'>") from None
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # What gRPC's server answers for an exception its handler let through.
        raise _error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}") from None
    failure = context.failure()
    if failure is not None:
        raise failure
    data = handler.response_serializer(response) if handler.response_serializer else response
    return deserialize(data) if deserialize else data


class _Call(grpc.aio.UnaryUnaryCall[Any, Any]):
    """The handler running in its own task; awaited, its response or its AioRpcError."""

    def __init__(self, task: asyncio.Task[Any], deadline: float):
        self._task = task
        self._deadline = deadline

    def __await__(self) -> Generator[Any, None, Any]:
        # Cancelling the awaiting task cancels the handler's (asyncio cancels what it awaits).
        return (yield from self._task.__await__())

    def cancel(self) -> bool:
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        return self._task.done()

    def add_done_callback(self, callback: Any) -> None:
        self._task.add_done_callback(lambda _: callback(self))

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _failure(self) -> grpc.aio.AioRpcError | None:
        if not self._task.done() or self._task.cancelled():
            return None
        error = self._task.exception()
        return error if isinstance(error, grpc.aio.AioRpcError) else None

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await asyncio.wait([self._task])
        failure = self._failure()
        return failure.trailing_metadata() if failure is not None else grpc.aio.Metadata()

    async def code(self) -> grpc.StatusCode:
        await asyncio.wait([self._task])
        if self._task.cancelled():
            return grpc.StatusCode.CANCELLED
        failure = self._failure()
        return failure.code() if failure is not None else grpc.StatusCode.OK

    async def details(self) -> str:
        await asyncio.wait([self._task])
        failure = self._failure()
        return (failure.details() or "") if failure is not None else ""

    async def wait_for_connection(self) -> None:
        pass


class _UnaryUnary(grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    def __init__(
        self,
        handlers: LocalHandlers,
        method: str,
        serialize: Callable[[Any], bytes] | None,
        deserialize: Callable[[bytes], Any] | None,
        network: grpc.aio.UnaryUnaryMultiCallable[Any, Any],
        forward: Forward,
    ):
        self._handlers = handlers
        self._method = method
        self._serialize = serialize
        self._deserialize = deserialize
        self._network = network
        self._forward = forward

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.UnaryUnaryCall[Any, Any]:
        if not self._handlers.bound:
            return self._network(
                request,
                timeout=timeout,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        # Forwarded as the network channel's interceptor would: the caller's token, request id
        # and remaining deadline (read here, in the caller's context).
        md, seconds = self._forward(grpc.aio.Metadata(*(metadata or ())), timeout)
        deadline = time.monotonic() + seconds
        data = self._serialize(request) if self._serialize else request
        task = asyncio.get_running_loop().create_task(
            _invoke(self._handlers, self._method, data, md, deadline, self._deserialize),
            # A server's call starts with nothing of its caller's context.
            context=contextvars.Context(),
        )
        return _Call(task, deadline)


class LocalChannel(grpc.aio.Channel):
    """A peer channel whose unary calls run locally once the address's server is bound
    (`LocalHandlers.bound`); everything else is the network channel's."""

    def __init__(self, network: grpc.aio.Channel, handlers: LocalHandlers, forward: Forward):
        self._network = network
        self._handlers = handlers
        self._forward = forward

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        network = self._network.unary_unary(method, request_serializer, response_deserializer)
        return _UnaryUnary(
            self._handlers, method, request_serializer, response_deserializer, network, self._forward
        )

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._network.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._network.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._network.stream_stream(*args, **kwargs)

    async def close(self, grace: float | None = None) -> None:
        await self._network.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._network.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._network.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._network.channel_ready()

    async def __aenter__(self) -> LocalChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
