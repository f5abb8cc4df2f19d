"""The small helpers every test directory shares, one of each: a free port, a caller's bearer
metadata, "this call fails with that status", a runtime and a real server on port 0 for a test, and
a `redis-server` (or a three-master Redis Cluster) of the suite's own."""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import subprocess
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
import redis as sync_redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc
from services.orchestration import SERVICE_NAME as ORCHESTRATION
from services.orchestration.agent_cache import AgentCache
from services.orchestration.clients import AgentsClient, ConversationClient
from services.orchestration.config import OrchestrationOptions
from services.orchestration.hub import EventHub
from services.orchestration.limits import RunLimits
from services.orchestration.providers import Providers
from services.orchestration.runs import RunManager
from services.orchestration.service import OrchestrationService
from services.orchestration.servicer import OrchestrationServicer
from services.orchestration.store import OrchestrationStore, SessionLocks
from services.platform.runtime import Runtime
from services.platform.server import Built, Server, ServiceRegistration
from services.platform.settings import Settings
from services.registry import registration


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that authenticates a call with `token`."""
    return (("authorization", f"Bearer {token}"),)


async def expect_status(
    call: Awaitable[object] | AsyncIterable[object], code: grpc.StatusCode | None = None
) -> grpc.aio.AioRpcError:
    """Awaits a unary call (or drains a stream) that must fail, asserts its status code when one is
    given, and returns the error for the test to look at its details."""
    try:
        if isinstance(call, AsyncIterable):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        assert code is None or exc.code() == code, f"expected {code}, got {exc.code()}: {exc.details()}"
        return exc
    raise AssertionError(f"expected {code or 'an error'}, the call succeeded")


class HasJwks(Protocol):
    def jwks(self) -> dict[str, Any]: ...


async def build_runtime(settings: Settings, keys: HasJwks | None = None, **create: Any) -> Runtime:
    """`Runtime.create(settings, **create)`; with `keys`, tokens are verified against those keys'
    JWKS, so a service under test needs no identity. The caller closes it."""
    runtime = await Runtime.create(settings, **create)
    if keys is not None:
        jwks = keys.jwks

        async def source() -> dict[str, Any]:
            return jwks()

        runtime.jwks_source = source
    return runtime


@dataclasses.dataclass
class RunningServer:
    server: Server
    channel: grpc.aio.Channel
    address: str

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)


async def start_server(
    runtime: Runtime, *services: str | ServiceRegistration, address: str = "127.0.0.1:0"
) -> RunningServer:
    """A real grpc.aio server of `services` (registry names or ready registrations) and an insecure
    channel to it. The caller closes it (`await running.close()`) before the runtime."""
    registrations = [
        s if isinstance(s, ServiceRegistration) else await registration(s, runtime) for s in services
    ]
    server = Server(runtime, registrations, address=address)
    port = await server.start()
    host = address.rsplit(":", 1)[0]
    bound = f"{host}:{port}"
    return RunningServer(server, grpc.aio.insecure_channel(bound), bound)


# "standalone" (default) or "cluster": which Redis the suite starts and the services are set for.
REDIS_MODE = os.environ.get("AGENTMESH_TEST_REDIS_MODE", "standalone")


class RedisServer:
    """`redis-server` on a port of its own, with nothing on disk: the tests may flush it, kill -9
    and restart it freely, which they must never do to a Redis they did not start."""

    OPTIONS = ("--save", "", "--appendonly", "no", "--daemonize", "no", "--dir")

    def __init__(self, directory: Path, port: int, *options: str):
        self.dir, self.port, self.options = directory, port, options
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                *self.OPTIONS,
                str(self.dir),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = sync_redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except sync_redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def restart(self, down_seconds: float = 0.5) -> float:
        """What a restart without persistence does: SHUTDOWN NOSAVE (every client cut, every key
        gone), `down_seconds` with nothing listening, the server started again on the same port.
        Returns how long the port was closed (blocking: call it through asyncio.to_thread)."""
        assert self.proc is not None
        # No retry: redis-py's default would reconnect to the server going away for seconds.
        client = sync_redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown(nosave=True)
        except sync_redis.ConnectionError:
            pass  # the server closes the connection as it goes
        finally:
            client.close()
        self.proc.wait(10)
        down = time.monotonic()
        time.sleep(down_seconds)
        self.start()
        return time.monotonic() - down

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, so below the ephemeral range."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisCluster:
    """Three cluster-enabled `redis-server`s (masters, no replicas) of the suite's own, slots spread
    by `redis-cli --cluster create`; nothing on disk but the nodes' cluster config files in
    `directory` (the caller removes it). The tests may flush every node."""

    def __init__(self, directory: Path, masters: int = 3, *, node_timeout_ms: int = 5000):
        ports: list[int] = []
        while len(ports) < masters:
            port = _cluster_port()
            if port not in ports:
                ports.append(port)
        self.nodes = [
            RedisServer(
                directory,
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                str(node_timeout_ms),
            )
            for port in ports
        ]

    @property
    def url(self) -> str:
        """One node, as REDIS_URL names it; the client learns the others from it."""
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=30,
        )
        # `create` returns once the slots are assigned; every node must also have heard of the others.
        deadline = time.monotonic() + 20
        for node in self.nodes:
            client = sync_redis.Redis(port=node.port)
            try:
                while client.cluster("info").get("cluster_state") != "ok" or len(
                    client.cluster("nodes")
                ) < len(self.nodes):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the test Redis Cluster did not come up (node {node.port})")
                    time.sleep(0.05)
            finally:
                client.close()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def sync_redis_client(url: str) -> sync_redis.Redis:
    """A blocking client of the suite's Redis, in the suite's mode (on a cluster it follows MOVED;
    typed as Redis, as the services type theirs)."""
    if REDIS_MODE == "cluster":
        return cast(sync_redis.Redis, sync_redis.RedisCluster.from_url(url))
    return sync_redis.Redis.from_url(url)


def flush_redis(url: str) -> None:
    """Empties the suite's own Redis: FLUSHALL on every master of a cluster, FLUSHDB on a server.
    Only for the Redis the session started (the flushable_redis_url fixture)."""
    client = sync_redis_client(url)
    try:
        if isinstance(client, sync_redis.RedisCluster):
            client.flushall(target_nodes=sync_redis.RedisCluster.PRIMARIES)
        else:
            client.flushdb()
    finally:
        client.close()


def build_orchestration(
    runtime: Runtime,
    *,
    redis: aioredis.Redis,
    options: OrchestrationOptions,
    providers: Providers,
    service_token: Callable[[], Awaitable[str]],
) -> Built[OrchestrationService]:
    """Orchestration as `services.orchestration.build` wires it, with the test's timings, providers
    and service token (no identity), on `redis` (its stream pool, which the caller closes)."""
    peers = runtime.settings.peers
    events = EventHub(
        redis,
        block_ms=options.read_block_ms,
        retention_seconds=options.event_retention_seconds,
        reader_buffer_events=options.reader_buffer_events,
        redis_buffer_events=options.redis_buffer_events,
    )
    limits = RunLimits(redis, slot_ttl_seconds=options.lease_ttl_seconds, clock=runtime.clock)
    agents = AgentCache(
        AgentsClient(runtime.peers.channel(peers.agents), timeout=options.peer_timeout_seconds),
        service_token=service_token,
        max_size=options.agent_cache_size,
        backoff_initial=options.watch_backoff_initial_seconds,
        backoff_max=options.watch_backoff_max_seconds,
        stream_seconds=options.watch_stream_seconds,
    )
    conversation = ConversationClient(
        runtime.peers.channel(peers.conversation), timeout=options.peer_timeout_seconds
    )
    store = OrchestrationStore(runtime.engine, autocommit=runtime.autocommit)
    runs = RunManager(
        store=store,
        events=events,
        limits=limits,
        agents=agents,
        conversation=conversation,
        providers=providers,
        options=options,
        clock=runtime.clock,
    )
    service = OrchestrationService(
        store=store,
        events=events,
        limits=limits,
        runs=runs,
        agents=agents,
        conversation=conversation,
        locks=SessionLocks(redis),
        page_tokens=runtime.page_tokens,
        options=options,
        clock=runtime.clock,
    )
    servicer = OrchestrationServicer(service, events)
    return Built(
        service=service,
        registration=ServiceRegistration(
            name=ORCHESTRATION,
            add_to_server=lambda server: (
                orchestration_service_pb2_grpc.add_OrchestrationServiceServicer_to_server(servicer, server)
            ),
            background=[agents.run_watch, runs.sweeper.run],
            on_stop=[runs.shutdown, events.stop],
        ),
    )


async def alembic(engine: AsyncEngine, service: str, verb: str, revision: str) -> None:
    """One alembic command (`upgrade`/`downgrade` to `revision`) of a service's migrations on `engine`,
    for the tests that walk a migration by hand."""
    from alembic import command
    from sqlalchemy import Connection

    from services.platform import migrations

    cfg = migrations._config(service)
    assert cfg is not None

    def run(connection: Connection) -> None:
        cfg.attributes["connection"] = connection
        getattr(command, verb)(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
