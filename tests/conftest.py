"""Shared fixtures: a real PostgreSQL database and a real Redis database per test session, test
signing keys with a token factory, and real grpc.aio servers on port 0.

PostgreSQL: AGENTMESH_TEST_DATABASE_URL names a server (default: postgres on 127.0.0.1:5432); each
session creates its own database there and drops it at the end. Redis: each session starts a
`redis-server` of its own on a free port (nothing on disk; stopped and its directory removed at the
end), which tests may flush. AGENTMESH_TEST_REDIS_MODE=cluster starts a three-master Redis Cluster
instead and sets the services' AGENTMESH_REDIS_MODE to match. AGENTMESH_TEST_REDIS_URL names a Redis
to use instead: the suite writes its keys there but never flushes it, and the tests that must empty
Redis are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.platform import migrations
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration
from services.platform.settings import Settings
from services.registry import SERVICES
from tests.helpers import (
    REDIS_MODE,
    RedisCluster,
    RedisServer,
    RunningServer,
    build_runtime,
    free_port,
    start_server,
)

PG_SERVER = os.environ.get("AGENTMESH_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER = os.environ.get("AGENTMESH_TEST_REDIS_URL", "")
ISSUER = "agentmesh"
AUDIENCE = "agentmesh"


@contextlib.contextmanager
def fresh_database(services: Iterable[str] = SERVICES) -> Iterator[str]:
    """A PostgreSQL database of its own (SQLAlchemy URL) with the migrations of `services` (default:
    every service's; none: an empty database) applied, dropped on exit."""
    name = f"agentmesh_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_SERVER.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    from services.platform.db import create_engine

    async def migrate() -> None:
        engine = create_engine(url)
        try:
            await migrations.upgrade(engine, list(services))
        finally:
            await engine.dispose()

    try:
        if services:  # an empty database may be opened from a running event loop
            asyncio.run(migrate())
        yield url
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The session's PostgreSQL database."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of the session's own (three masters), stopped and removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="agentmesh-test-redis-cluster-"))
    cluster = RedisCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The session's Redis: a `redis-server` the session starts (a cluster with
    AGENTMESH_TEST_REDIS_MODE=cluster), or AGENTMESH_TEST_REDIS_URL as given."""
    if REDIS_SERVER:
        yield REDIS_SERVER
        return
    if REDIS_MODE == "cluster":
        yield request.getfixturevalue("redis_cluster").url
        return
    directory = Path(tempfile.mkdtemp(prefix="agentmesh-test-redis-"))
    server = RedisServer(directory, free_port())
    try:
        server.start()
        yield server.url
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def flushable_redis_url(redis_url: str) -> str:
    """The session's Redis when the session started it (so emptying it destroys nothing of anyone's);
    skips the test when AGENTMESH_TEST_REDIS_URL names a Redis the suite does not own."""
    if REDIS_SERVER:
        pytest.skip("empties Redis: needs the suite's own redis-server (AGENTMESH_TEST_REDIS_URL is set)")
    return redis_url


@dataclasses.dataclass
class TestKeys:
    """A signing key like identity's, so tests of any service can mint tokens without identity."""

    private_key: Ed25519PrivateKey
    kid: str

    def jwks(self) -> dict[str, Any]:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}

    def token(
        self,
        *,
        tenant: str = "tenant-a",
        sub: str = "user-a",
        roles: tuple[str, ...] = ("owner",),
        tier: str = "pro",
        ttl: float = 300,
        **overrides: Any,
    ) -> str:
        now = time.time()
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "tenant": tenant,
            "roles": list(roles),
            "tier": tier,
            "typ": "access",
            "jti": uuid.uuid4().hex,
            "iat": int(now),
            "exp": int(now + ttl),
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private_key, algorithm="EdDSA", headers={"kid": self.kid})


@pytest.fixture(scope="session")
def keys() -> TestKeys:
    return TestKeys(Ed25519PrivateKey.generate(), kid=f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def settings(pg_url: str, redis_url: str) -> Settings:
    return _test_settings(pg_url, redis_url)


def _test_settings(pg_url: str, redis_url: str) -> Settings:
    return Settings.from_env(
        {
            "DATABASE_URL": pg_url,
            "REDIS_URL": redis_url,
            "AGENTMESH_REDIS_MODE": REDIS_MODE,
            "AGENTMESH_GRPC_PORT": "0",
            "AGENTMESH_PAGE_TOKEN_SECRET": "test-page-token-secret",
            "AGENTMESH_SERVICE_SECRET": "test-service-secret",
            # Revocation must be visible at once in tests (production trusts a check for a second).
            "AGENTMESH_REVOCATION_CACHE_SECONDS": "0",
            "AGENTMESH_HEALTH_INTERVAL_SECONDS": "0.2",
            "AGENTMESH_SHUTDOWN_GRACE_SECONDS": "5",
        }
    )


@pytest.fixture
async def runtime(settings: Settings, keys: TestKeys) -> AsyncIterator[Runtime]:
    rt = await build_runtime(settings, keys)
    yield rt
    await rt.close()


@pytest.fixture
async def serve(runtime: Runtime) -> AsyncIterator[Callable[..., Any]]:
    """`await serve("agents", ...)` (names or ready ServiceRegistrations) -> RunningServer on port 0."""
    started: list[RunningServer] = []

    async def start(*services: str | ServiceRegistration) -> RunningServer:
        running = await start_server(runtime, *services)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()
