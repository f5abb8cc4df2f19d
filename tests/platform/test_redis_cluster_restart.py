"""The cluster client rides through a master's restart (issue 18), as the standalone client does: a
Redis Cluster of the test's own (three masters, no replicas), the master REDIS_URL names shut down
without saving and started again two seconds later, while commands, pipelines across every node
and transactions run; none fails. Past AGENTMESH_REDIS_RETRY_SECONDS a call fails with an error the
services answer UNAVAILABLE 'Redis is unreachable; retry shortly'."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.platform import redis_client
from services.platform.error_mapping import DEPENDENCY_ERRORS, unavailable
from tests.helpers import RedisCluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


async def test_a_master_restart_within_the_retry_window_fails_no_call(own_cluster: RedisCluster) -> None:
    client = redis_client.create_redis(own_cluster.url, mode="cluster", retry_seconds=8)
    calls: collections.Counter[str] = collections.Counter()
    failures: list[BaseException] = []
    warm, restarted = asyncio.Event(), asyncio.Event()
    after: collections.Counter[str] = collections.Counter()

    async def work(worker: int) -> None:
        n = 0
        while not restarted.is_set() or after[f"w{worker}"] < 20:
            n += 1
            key = f"w{worker}:{n % 64}"  # over every node's slots
            try:
                await client.set(key, n)
                await client.get(key)  # None when the restart took the key with it
                async with client.pipeline(transaction=False) as pipe:
                    for k in range(6):
                        pipe.get(f"w{worker}:{(n + k) % 64}")
                    await pipe.execute()
                async with client.pipeline(transaction=True) as tx:  # one slot: {w<worker>}
                    tx.set(f"{{w{worker}}}:a", n)
                    tx.get(f"{{w{worker}}}:a")
                    assert (await tx.execute())[1] == str(n).encode()
                calls["rounds"] += 1
                if calls["rounds"] == 50:
                    warm.set()
                if restarted.is_set():
                    after[f"w{worker}"] += 1
            except Exception as exc:  # every failure is the test's failure
                failures.append(exc)
                warm.set()
                return

    try:
        workers = [asyncio.create_task(work(i)) for i in range(8)]
        await asyncio.wait_for(warm.wait(), 30)
        down = await asyncio.to_thread(own_cluster.nodes[0].restart, 2.0)
        restarted.set()
        await asyncio.gather(*workers)
    finally:
        await client.aclose()
    assert not failures, [repr(f) for f in failures[:3]]
    assert down >= 2.0
    assert sum(after.values()) >= 8 * 20  # every worker went on after the restart


async def test_past_the_retry_window_a_call_fails_as_redis_unavailable(own_cluster: RedisCluster) -> None:
    client = redis_client.create_redis(own_cluster.url, mode="cluster", retry_seconds=0.5)
    try:
        keys = [f"k{i}" for i in range(32)]  # over every node's slots
        for key in keys:
            await client.set(key, 1)
        own_cluster.nodes[0].kill()
        with pytest.raises(DEPENDENCY_ERRORS) as raised:
            for key in keys:
                await client.get(key)
        assert unavailable(raised.value).message == "Redis is unreachable; retry shortly"
    finally:
        await client.aclose()
