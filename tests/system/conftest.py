"""Fixtures of the multi-process suite: a cluster of `agentmesh serve` processes per module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import fresh_database
from tests.helpers import REDIS_MODE
from tests.system.cluster import Cluster

SERVICES = ("identity", "agents", "conversation", "orchestration", "gateway")


@pytest.fixture(scope="module")
def cluster_pg_url() -> Iterator[str]:
    """A database for this module's cluster alone. Sharing the session's would let the in-process
    orchestration of other tests (tests/fuzz's stack) sweep this cluster's runs: their leases live in
    a Redis that sweeper does not read, so it would see every run here as abandoned and fail it."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(
    cluster_pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """identity, agents, conversation, orchestration and the gateway, each its own process, on a
    PostgreSQL database of their own and the session's Redis (its Redis Cluster with
    AGENTMESH_TEST_REDIS_MODE=cluster); stopped with SIGTERM at the end (each exits 0)."""
    running = Cluster(
        tmp_path_factory.mktemp("cluster"),
        database_url=cluster_pg_url,
        redis_url=redis_url,
        redis_mode=REDIS_MODE,
    )
    for name in SERVICES:
        running.add(name)
    running.start()
    yield running
    codes = running.close()
    assert codes and all(code == 0 for code in codes.values()), codes


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
