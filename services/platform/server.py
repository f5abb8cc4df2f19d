"""The grpc.aio server every agentmesh process runs: services, health, reflection, the middleware
chain, TLS, and a graceful stop (health NOT_SERVING first, then drain within the grace period)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from services.platform import db, redis_client
from services.platform.auth import Authentication
from services.platform.error_mapping import ErrorMapping
from services.platform.health import HealthMonitor
from services.platform.interceptor import Pipeline
from services.platform.local_calls import LocalHandlers
from services.platform.logs import AccessLog
from services.platform.metrics import Metrics
from services.platform.relay import Relay, ServerThread
from services.platform.runtime import Runtime
from services.platform.settings import TlsSettings

log = logging.getLogger("agentmesh.server")


@dataclasses.dataclass
class ServiceRegistration:
    """What a service hands the server: its name, how to add it, and what runs beside it."""

    name: str
    add_to_server: Callable[[grpc.aio.Server], None]
    # Full method names ("/pkg.Service/Method") callable without an access token.
    public_methods: frozenset[str] = frozenset()
    # Started once the server listens (background jobs); cancelled before the runtime closes.
    background: list[Callable[[], Coroutine[Any, Any, None]]] = dataclasses.field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=list)
    # Run when stopping begins, before in-flight calls drain: end endless streams (watches) here.
    on_drain: list[Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=list)


S = TypeVar("S")

# The least time between a client's keepalive pings on a connection without data that the server
# takes. Peers and the gateway ping every 30 s (peers.py, gateway/upstream.py); gRPC's default, 5
# minutes, answered their third ping on a quiet stream with GOAWAY "too_many_pings", which ended
# every stream on the connection.
MIN_PING_INTERVAL_MS = 5_000


@dataclasses.dataclass(frozen=True)
class Built(Generic[S]):
    """What a service's build(runtime) returns: its domain service and what the server needs."""

    service: S  # the domain service object (tests/benchmarks call it)
    registration: ServiceRegistration  # what the server needs


class BindError(OSError):
    """The address to listen on is taken (or not ours); the message says which and how to change it."""


def ensure_port_free(host: str, port: int, *, what: str, variable: str) -> None:
    """Raises BindError when host:port cannot be bound. Checked before the server binds so the
    operator reads one line instead of gRPC core's or uvicorn's log lines and exit."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            # As the servers do: a port left in TIME_WAIT by a previous run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise BindError(
            f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc} (set {variable})"
        ) from None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    if not tls.enabled:
        return None
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file), _read(tls.cert_file))],
        root_certificates=_read(tls.ca_file) if tls.mutual else None,
        require_client_auth=tls.mutual,
    )


class Server:
    """`start()` binds and serves; `stop()` drains; `run_until_signal()` does both around SIGTERM."""

    def __init__(
        self,
        runtime: Runtime,
        registrations: Iterable[ServiceRegistration],
        *,
        address: str | None = None,
        reuse_port: bool = False,
        metrics: Metrics | None = None,
        authentication: Any | None = None,
    ):
        """`authentication`: the middleware that puts the Principal on each call; None means the
        standard JWT Authentication (the identity benchmark swaps in a fixed principal to measure it)."""
        self.runtime = runtime
        self.registrations = list(registrations)
        self._address = address or runtime.settings.grpc_address
        self._reuse_port = reuse_port
        self.metrics = metrics or Metrics()
        public = frozenset().union(*(r.public_methods for r in self.registrations))
        interceptors: list[grpc.aio.ServerInterceptor] = [
            *(
                # OpenTelemetry's instrumentation declares no types for it.
                [aio_server_interceptor(tracer_provider=runtime.tracer_provider)]  # type: ignore[no-untyped-call]  # OTel's grpc instrumentation ships no annotations
                if runtime.tracing
                else []
            ),
            Pipeline(
                [
                    AccessLog(),
                    self.metrics,
                    ErrorMapping(),
                    authentication
                    if authentication is not None
                    else Authentication(runtime.verifier, public_methods=public),
                ]
            ),
        ]
        self._options = [
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ]
        self.health_servicer = health.aio.HealthServicer()
        names = [r.name for r in self.registrations]
        reflected = [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        # The handlers, behind the interceptors, that the server thread relays calls to (relay.py);
        # unary peer calls of this process to this address run them too (local_calls.py). An address
        # on port 0 is no peer's: each server there has handlers of its own.
        shared = None if self._address.endswith(":0") else runtime.peers.serve_locally(self._address)
        self._handlers = shared or LocalHandlers()
        self._handlers.bind(
            [
                *(r.add_to_server for r in self.registrations),
                lambda server: health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, server),
                # enable_server_reflection would pick the blocking servicer for a non-aio server.
                lambda server: reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]  # grpc_reflection's generated code ships no annotations
                    reflection.aio.ReflectionServicer(reflected), server
                ),
            ],
            interceptors,
        )
        self._thread: ServerThread | None = None
        self._server: grpc.aio.Server | None = None
        self.health = HealthMonitor(
            self.health_servicer,
            names,
            {"database": lambda: db.ping(runtime.engine), "redis": lambda: redis_client.ping(runtime.redis)},
            interval=runtime.settings.health_interval_seconds,
        )
        self._tasks: list[asyncio.Task[None]] = []
        # Set by the first stop(): a second one (a test, a second signal) waits for it and does no
        # hook twice (closing pools, providers and clients that are already closed).
        self._stopping: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        creds = server_credentials(self.runtime.settings.tls)
        host, _, port = self._address.rpartition(":")
        if not self._reuse_port:
            ensure_port_free(
                host.strip("[]"), int(port), what="gRPC", variable="AGENTMESH_GRPC_PORT or --grpc-port"
            )
        self._thread = ServerThread()
        try:
            self.port = await self._thread.run(
                self._listen(
                    creds, Relay(self._handlers, main=asyncio.get_running_loop(), server=self._thread.loop)
                )
            )
        except BaseException:
            await self._thread.close()
            self._thread = None
            raise
        await self.health.check_once()
        self.health.start()
        for registration in self.registrations:
            for job in registration.background:
                self._tasks.append(asyncio.get_running_loop().create_task(job()))
        log.info(
            "serving",
            extra={
                "fields": {
                    "address": self._address,
                    "port": self.port,
                    "services": [r.name for r in self.registrations],
                }
            },
        )
        return self.port

    async def _listen(self, creds: grpc.ServerCredentials | None, relay: Relay) -> int:
        """On the server thread: the grpc.aio server, listening, its calls relayed to this loop."""
        self._server = grpc.aio.server(options=self._options)
        self._server.add_generic_rpc_handlers((relay,))
        try:
            if creds is None:
                port = self._server.add_insecure_port(self._address)
            else:
                port = self._server.add_secure_port(self._address, creds)
        except RuntimeError:
            port = 0
        if port == 0:
            raise BindError(
                f"cannot listen for gRPC on {self._address} (set AGENTMESH_GRPC_PORT or --grpc-port)"
            )
        await self._server.start()
        return port

    async def stop(self, grace: float | None = None) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        grace = self.runtime.settings.shutdown_grace_seconds if grace is None else grace
        await self.health.shutdown()
        for registration in self.registrations:
            for hook in registration.on_drain:
                await hook()
        # New calls are refused from here; in-flight calls and streams get `grace` seconds.
        if self._thread is not None and self._server is not None:
            await self._thread.run(self._server.stop(grace))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for registration in self.registrations:
            for hook in registration.on_stop:
                await hook()
        # Until here (the runs' last answers stored in `up`), this process's peer calls ran locally.
        self._handlers.unbind()
        if self._thread is not None:
            await self._thread.close()
        log.info("stopped", extra={"fields": {"address": self._address}})

    async def run_until_signal(self, *, on_started: Callable[[int], None] | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        if on_started is not None:
            on_started(self.port)
        await stop.wait()
        log.info(
            "signal received, draining",
            extra={"fields": {"grace_seconds": self.runtime.settings.shutdown_grace_seconds}},
        )
        await self.stop()
