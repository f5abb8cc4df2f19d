"""Upstream gRPC: one long-lived channel per service address, the metadata the gateway forwards
(an allowlist), the call deadline from Grpc-Timeout, and the trace the gateway starts or continues."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

import grpc
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.errors import BadInput
from gateway.routes import Route
from services.platform.peers import channel_credentials
from services.platform.settings import Settings

# Request headers forwarded as gRPC metadata; anything else (cookies, hop-by-hop headers such as
# Connection, Upgrade or Transfer-Encoding, Host) stays at the gateway.
FORWARDED_HEADERS = ("authorization",)
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PROPAGATOR = TraceContextTextMapPropagator()


def parse_timeout(raw: str | None, default: float | None) -> float | None:
    """`Grpc-Timeout` ("5S", "200m") in seconds, or `default` when absent."""
    if raw is None:
        return default
    m = _TIMEOUT.match(raw.strip())
    if m is None:
        raise BadInput("grpc-timeout", f"expected digits and a unit H, M, S, m, u or n, got {raw!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def request_id_of(headers: Mapping[str, str]) -> str:
    """The caller's X-Request-Id when it is sane, else a fresh one."""
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


class Upstreams:
    """Channels keyed by peer name (identity, agents, conversation, orchestration).

    `channels` (tests, embedded) are used as given and not closed here; otherwise one channel per
    distinct address in settings.peers is opened on first use and closed by `close()`.
    """

    def __init__(self, settings: Settings, *, channels: Mapping[str, grpc.aio.Channel] | None = None):
        self._settings = settings
        self._given = dict(channels or {})
        self._owned: dict[str, grpc.aio.Channel] = {}
        self._unary: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable[Message, Message]] = {}
        self._streams: dict[tuple[str, str], grpc.aio.UnaryStreamMultiCallable[Message, Message]] = {}

    def channel(self, peer: str) -> grpc.aio.Channel:
        if peer in self._given:
            return self._given[peer]
        if "*" in self._given:
            return self._given["*"]
        address = getattr(self._settings.peers, peer, "") or ""
        if not address:
            raise LookupError(f"no address configured for the {peer} service")
        existing = self._owned.get(address)
        if existing is None:
            options = [
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.max_receive_message_length", 16 << 20),
                # A stream's HTTP/2 window stays at its 64 KiB default: with BDP probing it grows
                # to megabytes, which the gateway would hold for every client that stops reading
                # (measured: about 4 MiB a stalled stream) before orchestration saw the backlog.
                ("grpc.http2.bdp_probe", 0),
            ]
            creds = channel_credentials(self._settings.tls)
            existing = (
                grpc.aio.insecure_channel(address, options=options)
                if creds is None
                else grpc.aio.secure_channel(address, creds, options=options)
            )
            self._owned[address] = existing
        return existing

    def peers(self) -> list[str]:
        return ["identity", "agents", "conversation", "orchestration"]

    def unary(self, route: Route) -> grpc.aio.UnaryUnaryMultiCallable[Message, Message]:
        """The (cached) callable of a unary route's RPC."""
        key = (route.package_key, route.rpc_path)
        found = self._unary.get(key)
        if found is None:
            found = self.channel(route.package_key).unary_unary(
                route.rpc_path,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )
            self._unary[key] = found
        return found

    def server_stream(self, route: Route) -> grpc.aio.UnaryStreamMultiCallable[Message, Message]:
        """The (cached) callable of a server-streaming route's RPC."""
        key = (route.package_key, route.rpc_path)
        found = self._streams.get(key)
        if found is None:
            found = self.channel(route.package_key).unary_stream(
                route.rpc_path,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )
            self._streams[key] = found
        return found

    async def close(self) -> None:
        for channel in self._owned.values():
            await channel.close()
        self._owned.clear()
        self._unary.clear()
        self._streams.clear()


class Tracing:
    """Continues the caller's trace (traceparent) or starts one; without a provider, passes it on."""

    def __init__(self, tracer_provider: trace.TracerProvider | None):
        self._tracer = tracer_provider.get_tracer("agentmesh.gateway") if tracer_provider else None

    def start(self, name: str, headers: Mapping[str, str]) -> tuple[Spans | None, list[tuple[str, str]]]:
        """(span or None, trace metadata to forward); end the span with `span.end()`."""
        carrier = {k: headers[k] for k in ("traceparent", "tracestate") if k in headers}
        if self._tracer is None:
            return None, list(carrier.items())
        parent = _PROPAGATOR.extract(carrier)
        server = self._tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER)
        # The upstream call is a CLIENT span under the request's SERVER span, as OpenTelemetry's gRPC
        # client interceptor makes in the services: the upstream's server span has a client parent.
        client = self._tracer.start_span(
            name, context=trace.set_span_in_context(server), kind=trace.SpanKind.CLIENT
        )
        out: dict[str, str] = {}
        _PROPAGATOR.inject(out, context=trace.set_span_in_context(client))
        return Spans(server, client), list(out.items())


class Spans:
    """The gateway's server and client span of one request, ended together."""

    def __init__(self, server: trace.Span, client: trace.Span):
        self.server = server
        self.client = client

    def end(self) -> None:
        self.client.end()
        self.server.end()


def metadata_for(
    headers: Mapping[str, str], request_id: str, trace_metadata: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    metadata = [(k, headers[k]) for k in FORWARDED_HEADERS if k in headers]
    metadata.append(("x-request-id", request_id))
    metadata.extend(trace_metadata)
    return metadata
