"""Fixtures of the multi-process suite: a cluster of `agentmesh serve` processes per module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.system.cluster import Cluster

SERVICES = ("identity", "agents", "conversation", "orchestration", "gateway")


@pytest.fixture(scope="module")
def cluster(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """identity, agents, conversation, orchestration and the gateway, each its own process, on the
    session's PostgreSQL database and Redis db; stopped with SIGTERM at the end (each exits 0)."""
    running = Cluster(tmp_path_factory.mktemp("cluster"), database_url=pg_url, redis_url=redis_url)
    for name in SERVICES:
        running.add(name)
    running.start()
    yield running
    codes = running.close()
    assert codes and all(code == 0 for code in codes.values()), codes


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
