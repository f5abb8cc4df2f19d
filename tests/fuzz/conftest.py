"""One in-process mesh (all four services + the gateway) for the whole fuzz session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.identity.keys import private_pem
from tests.conftest import _test_settings
from tests.fuzz.stack import RunningStack, Snapshots, Stack


@pytest.fixture(scope="session")
def stack(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    key_file = tmp_path_factory.mktemp("fuzz-keys") / "signing.pem"
    key_file.write_bytes(private_pem(Ed25519PrivateKey.generate()))
    running = RunningStack(_test_settings(pg_url, redis_url), str(key_file))
    try:
        yield running.stack
    finally:
        running.close()


@pytest.fixture(autouse=True)
def _clear_login_failures(redis_url: str) -> Iterator[None]:
    # Generated Login calls fail from 127.0.0.1: the per-address throttle must not lock out the
    # logins the next tests make.
    yield
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter("identity:login-fail:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def snapshots(stack: Stack) -> Iterator[Snapshots]:
    snaps = Snapshots(stack.db_url)
    yield snaps
    snaps.close()
