"""Calls to peer services: one long-lived channel per address, and `call`, the one way to make a call.

Every call on a `PeerChannels` channel made while serving a call forwards the caller's bearer token
and request id, and gets the caller's remaining deadline capped at `deadline_cap`, or at the timeout
the code passes (a long-lived stream such as WatchAgents passes its own). The channel's interceptor
does it, so it holds for every call on the channel. Trace context travels through OpenTelemetry's
client interceptors.

`call` is the call boundary (temporalio's `_rpc_call`, google-api-core's `wrap_errors`): a peer call
is one line through it whatever its shape, and a failure comes back as the exception its server
raised (`errors.from_rpc_error`), never as a `grpc.RpcError`:

    reply = await peers.call(stub.GetAgent, request, metadata=md, timeout=5)        # unary
    async for reply in peers.call(stub.WatchAgents, request, timeout=None): ...     # server stream
    reply = await peers.call(stub.Upload, requests)                                 # client stream
    chat = peers.call(stub.Chat, metadata=md); await chat.write(r); await chat.read()  # bidi
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Sequence
from typing import Any, Generic, TypeVar, cast, overload

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider

from services.platform import errors
from services.platform.call_context import current_call
from services.platform.local_calls import LocalChannel, LocalHandlers
from services.platform.settings import TlsSettings

FORWARDED = ("authorization", "x-request-id")
TRACE_HEADERS = ("traceparent", "tracestate")


class _Forwarding(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, deadline_cap: float, *, pass_trace: bool = False):
        self._cap = deadline_cap
        # Without OpenTelemetry's client interceptor (this process exports nothing), the caller's
        # trace context is passed on as it came.
        self._forwarded = FORWARDED + TRACE_HEADERS if pass_trace else FORWARDED

    def forward(self, metadata: grpc.aio.Metadata, timeout: float | None) -> tuple[grpc.aio.Metadata, float]:
        """The call's metadata and timeout with what the call being served passes on."""
        timeout = timeout if timeout is not None else self._cap
        call = current_call.get()
        if call is not None:
            for key, value in call.metadata:
                if key in self._forwarded and key not in metadata.keys():
                    metadata.add(key, value)
            if "x-request-id" not in metadata.keys():
                metadata.add("x-request-id", call.request_id)
            if call.deadline is not None:
                timeout = min(timeout, max(0.0, call.deadline - time.monotonic()))
        return metadata, timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata, timeout = self.forward(grpc.aio.Metadata(*(details.metadata or ())), details.timeout)
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    # One body for the four shapes: only the call details change, so the continuation and the call
    # it returns pass through untyped (their generic parameters differ per shape).
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials | None:
    """TLS for channels when configured; with a CA, our certificate is presented too (mutual TLS)."""
    if not tls.enabled:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file) if tls.ca_file else None,
        private_key=_read(tls.key_file) if tls.mutual else None,
        certificate_chain=_read(tls.cert_file) if tls.mutual else None,
    )


class PeerChannels:
    """Lazily opened, long-lived channels keyed by address; `close()` at shutdown."""

    def __init__(
        self,
        *,
        deadline_cap: float,
        tls: TlsSettings,
        tracer_provider: TracerProvider | None = None,
    ):
        self._cap = deadline_cap
        self._tls = tls
        self._tracer_provider = tracer_provider
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Per address, the handlers of this process's server there, once one is built at it
        # (services/platform/local_calls.py); not with tracing, whose server spans need the network.
        self._local: dict[str, LocalHandlers] | None = {} if tracer_provider is None else None

    def serve_locally(self, address: str) -> LocalHandlers | None:
        """The handlers a server built at `address` in this process fills, so that unary peer calls
        to that address run here; None when calls must take the network (tracing)."""
        if self._local is None:
            return None
        return self._local.setdefault(address, LocalHandlers())

    def channel(self, address: str) -> grpc.aio.Channel:
        if not address:
            raise ValueError("peer address is not configured")
        existing = self._channels.get(address)
        if existing is not None:
            return existing
        forwarding = _Forwarding(self._cap, pass_trace=self._tracer_provider is None)
        interceptors: list[Any] = [forwarding]
        if self._tracer_provider is not None:
            # OpenTelemetry's instrumentation declares no types for it.
            interceptors += aio_client_interceptors(tracer_provider=self._tracer_provider)  # type: ignore[no-untyped-call]  # OTel's grpc instrumentation ships no annotations
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        creds = channel_credentials(self._tls)
        if creds is None:
            channel = grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        else:
            channel = grpc.aio.secure_channel(address, creds, options=options, interceptors=interceptors)
        local = self.serve_locally(address)
        if local is not None:
            channel = LocalChannel(channel, local, forwarding.forward)
        self._channels[address] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Metadata = Sequence[tuple[str, str | bytes]]
_AnyCall = (
    grpc.aio.UnaryUnaryCall[Any, Any]
    | grpc.aio.UnaryStreamCall[Any, Any]
    | grpc.aio.StreamUnaryCall[Any, Any]
    | grpc.aio.StreamStreamCall[Any, Any]
)

# What each shape adds to the common call: requests are written to client and bidi streams only,
# a single response is awaited from unary and client-stream calls, responses are read from streams.
_Writable = grpc.aio.StreamUnaryCall[Any, Any] | grpc.aio.StreamStreamCall[Any, Any]
_Awaitable = grpc.aio.UnaryUnaryCall[Any, Any] | grpc.aio.StreamUnaryCall[Any, Any]
_Readable = grpc.aio.UnaryStreamCall[Any, Any] | grpc.aio.StreamStreamCall[Any, Any]


class _PeerCall(Generic[Req, Resp]):
    """What every shape shares: headers, cancellation, and writing (client and bidi streams)."""

    def __init__(self, call: _AnyCall):
        self._call = call

    async def initial_metadata(self) -> grpc.aio.Metadata:
        """The server's headers: once they arrive, the server has accepted the call."""
        try:
            return await self._call.initial_metadata()
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None

    async def write(self, request: Req) -> None:
        """Sends one request of a client or bidi stream. On a stream that has ended, raises how it
        ended: its failure, or FailedPrecondition when it ended well."""
        try:
            await cast(_Writable, self._call).write(request)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        except (asyncio.InvalidStateError, grpc.aio.UsageError):
            if not self._call.done():
                raise
            raise await self._ended() from None

    async def _ended(self) -> errors.AgentmeshError:
        code = await self._call.code()
        if code == grpc.StatusCode.OK:
            return errors.FailedPrecondition("the stream has already ended", reason="STREAM_ENDED")
        ended = grpc.aio.AioRpcError(
            code,
            await self._call.initial_metadata() or grpc.aio.Metadata(),
            await self._call.trailing_metadata() or grpc.aio.Metadata(),
            await self._call.details(),
        )
        return errors.from_rpc_error(ended)

    async def done_writing(self) -> None:
        try:
            await cast(_Writable, self._call).done_writing()
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None

    def cancel(self) -> bool:
        return self._call.cancel()

    def cancelled(self) -> bool:
        return self._call.cancelled()

    def done(self) -> bool:
        return self._call.done()


class Reply(_PeerCall[Req, Resp]):
    """A unary or client-stream call: await it for the response."""

    def __await__(self) -> Generator[Any, None, Resp]:
        try:
            return cast(Resp, (yield from cast(_Awaitable, self._call).__await__()))
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None


class Replies(_PeerCall[Req, Resp]):
    """A server or bidi stream: iterate it (or `read()`, None at the end) for the responses."""

    async def read(self) -> Resp | None:
        try:
            reply = await cast(_Readable, self._call).read()
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        return None if reply is grpc.aio.EOF else cast(Resp, reply)

    async def __aiter__(self) -> AsyncIterator[Resp]:
        while (reply := await self.read()) is not None:
            yield reply


@overload
def call(
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    *,
    timeout: float | None = None,
    metadata: Metadata = (),
    wait_for_ready: bool | None = None,
) -> Reply[Req, Resp]: ...
@overload
def call(
    method: grpc.aio.StreamUnaryMultiCallable[Req, Resp],
    request: AsyncIterable[Req] | Iterable[Req] | None = None,
    *,
    timeout: float | None = None,
    metadata: Metadata = (),
    wait_for_ready: bool | None = None,
) -> Reply[Req, Resp]: ...
@overload
def call(
    method: grpc.aio.UnaryStreamMultiCallable[Req, Resp],
    request: Req,
    *,
    timeout: float | None = None,
    metadata: Metadata = (),
    wait_for_ready: bool | None = None,
) -> Replies[Req, Resp]: ...
@overload
def call(
    method: grpc.aio.StreamStreamMultiCallable[Req, Resp],
    request: AsyncIterable[Req] | Iterable[Req] | None = None,
    *,
    timeout: float | None = None,
    metadata: Metadata = (),
    wait_for_ready: bool | None = None,
) -> Replies[Req, Resp]: ...
def call(
    method: Any,
    request: Any = None,
    *,
    timeout: float | None = None,
    metadata: Metadata = (),
    wait_for_ready: bool | None = None,
) -> Reply[Any, Any] | Replies[Any, Any]:
    """Starts a call of `method` (a stub attribute, any shape) with `request` (a message, or for a
    client or bidi stream an iterable of messages or None to `write` them).

    `metadata` is added to what the channel forwards (a background task, outside any call, passes
    the acting user's token here); `timeout` is capped by the channel as the module docstring says.
    Every failure, whenever it surfaces (await, read, write, iteration), is the typed exception.
    """
    started = method(request, timeout=timeout, metadata=tuple(metadata), wait_for_ready=wait_for_ready)
    if isinstance(method, grpc.aio.UnaryUnaryMultiCallable | grpc.aio.StreamUnaryMultiCallable):
        return Reply(started)
    return Replies(started)
