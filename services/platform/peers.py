"""Channels to peer services: one long-lived channel per address, each call with a deadline and the
caller's identity.

Every call made while serving a call forwards the caller's bearer token and request id, and gets the
caller's remaining deadline capped at `deadline_cap`, or at the timeout the code passes (a long-lived
stream such as WatchAgents passes its own). Trace
context travels through OpenTelemetry's client interceptors.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider

from services.platform.middleware import current_call
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

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        timeout = details.timeout if details.timeout is not None else self._cap
        call = current_call.get()
        if call is not None:
            for key, value in call.metadata:
                if key in self._forwarded and key not in metadata:
                    metadata.add(key, value)
            if "x-request-id" not in metadata:
                metadata.add("x-request-id", call.request_id)
            if call.deadline is not None:
                timeout = min(timeout, max(0.0, call.deadline - time.monotonic()))
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
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

    def channel(self, address: str) -> grpc.aio.Channel:
        if not address:
            raise ValueError("peer address is not configured")
        existing = self._channels.get(address)
        if existing is not None:
            return existing
        interceptors: list[Any] = [_Forwarding(self._cap, pass_trace=self._tracer_provider is None)]
        if self._tracer_provider is not None:
            interceptors += aio_client_interceptors(tracer_provider=self._tracer_provider)
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        creds = channel_credentials(self._tls)
        if creds is None:
            channel = grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        else:
            channel = grpc.aio.secure_channel(address, creds, options=options, interceptors=interceptors)
        self._channels[address] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
