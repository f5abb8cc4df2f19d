"""Redis Cluster mode on a real three-master cluster of the suite's own (the session's redis_cluster
fixture): the client, one object's multi-key work in one slot, the hot window's batched append over
many conversations split by slot, the revocation check across two slots, agent events across nodes,
and health (the cluster's own state)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, RedisClusterException, ResponseError

from services.agents.events import EventBus
from services.agents.models import AgentEvent, ChangeType
from services.conversation.hot_window import HotWindow
from services.conversation.models import Message
from services.identity.redis_state import Revocations
from services.platform import redis_client
from services.platform.runtime import revocation_check
from services.platform.settings import Settings, SettingsError
from tests.helpers import RedisCluster


@pytest.fixture
async def cluster_redis(redis_cluster: RedisCluster) -> AsyncIterator[aioredis.Redis]:
    client = redis_client.create_redis(redis_cluster.url, mode="cluster")
    yield client
    await client.aclose()


def _node_of(cluster: RedisCluster, key: str) -> int:
    """The port of the master that owns `key`, asked of the cluster itself (CLUSTER KEYSLOT/SLOTS)."""
    client = sync_redis.Redis(port=cluster.nodes[0].port)
    try:
        slot = client.cluster("keyslot", key)
        for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    finally:
        client.close()
    raise AssertionError(f"no node owns slot {slot}")


def _message(conversation_id: str, sequence: int) -> Message:
    return Message(
        id=uuid.uuid4().hex,
        conversation_id=conversation_id,
        sequence=sequence,
        role="user",
        content=f"message {sequence}",
        token_count=2,
        metadata={},
        tool_call_id="",
        create_time=sequence,
    )


def test_the_mode_is_a_setting_and_cluster_needs_a_url() -> None:
    assert Settings.from_env({}).redis_mode == "standalone"
    assert Settings.from_env({"AGENTMESH_REDIS_MODE": "cluster"}).redis_mode == "cluster"
    with pytest.raises(SettingsError, match="AGENTMESH_REDIS_MODE must be standalone or cluster"):
        Settings.from_env({"AGENTMESH_REDIS_MODE": "sentinel"})
    with pytest.raises(SettingsError, match="needs REDIS_URL"):
        redis_client.create_redis("", mode="cluster")


async def test_the_cluster_client_spreads_keys_over_every_master(
    cluster_redis: aioredis.Redis, redis_cluster: RedisCluster
) -> None:
    assert redis_client.is_cluster(cluster_redis)
    keys = [f"test:spread:{uuid.uuid4().hex}" for _ in range(60)]
    try:
        for i, key in enumerate(keys):
            await cluster_redis.set(key, str(i), ex=60)
        assert [await cluster_redis.get(k) for k in keys] == [str(i).encode() for i in range(len(keys))]
        # Each master really holds some of them (the client followed the slot map, not one node).
        assert {_node_of(redis_cluster, k) for k in keys} == {n.port for n in redis_cluster.nodes}
    finally:
        await cluster_redis.delete(*keys)  # split by slot by the cluster client


async def test_one_objects_keys_share_a_slot_so_its_transaction_runs(cluster_redis: aioredis.Redis) -> None:
    run = uuid.uuid4().hex
    lease, cancel = f"{{run:{run}}}:lease", f"{{run:{run}}}:cancel"
    assert key_slot(lease.encode()) == key_slot(cancel.encode())
    async with cluster_redis.pipeline(transaction=True) as pipe:
        pipe.set(lease, b"me", ex=60)
        pipe.set(cancel, b"now", ex=60)
        pipe.get(cancel)
        assert (await pipe.execute())[-1] == b"now"
    assert await cluster_redis.mget(lease, cancel) == [b"me", b"now"]
    # Without the tag two objects' keys land in different slots, and the same transaction is refused.
    other = f"run:{uuid.uuid4().hex}:lease"
    assert key_slot(other.encode()) != key_slot(lease.encode())
    with pytest.raises((RedisClusterException, ResponseError)):
        await cluster_redis.mget(lease, other)
    with pytest.raises((RedisClusterException, ResponseError)):
        async with cluster_redis.pipeline(transaction=True) as pipe:
            pipe.get(lease)
            pipe.get(other)
            await pipe.execute()
    await cluster_redis.delete(lease, cancel)
    # The hot window's key carries its conversation in the same way.
    assert HotWindow.key("c-1") == "{conversation:c-1}:hot"


async def test_hot_window_batch_over_many_conversations_is_split_by_slot(
    cluster_redis: aioredis.Redis, redis_cluster: RedisCluster
) -> None:
    hot = HotWindow(cluster_redis, size=3, ttl_seconds=60)
    conversations = [uuid.uuid4().hex for _ in range(40)]
    keys = [HotWindow.key(c) for c in conversations]
    groups = redis_client.slot_groups(cluster_redis, keys)
    assert len(groups) > 1 and len({_node_of(redis_cluster, k) for k in keys}) == 3
    with_window, without = conversations[:30], conversations[30:]
    try:
        for c in with_window:
            await hot.fill(c, [_message(c, s) for s in (1, 2, 3)])
        # One batch of appends (as concurrent calls make it), across all 40 conversations' slots.
        await hot._append_many([_message(c, 4) for c in conversations])
        for c in with_window:
            window = await hot.read(c, max_sequence=10, count=10)
            assert window is not None and [m.sequence for m in window] == [4, 3, 2]  # trimmed to size
        # An append never creates a window (the next reader rebuilds it whole from PostgreSQL).
        assert await cluster_redis.exists(*(HotWindow.key(c) for c in without)) == 0
        # And through the batcher, as the service calls it.
        await asyncio.gather(*(hot.append(_message(c, 5)) for c in with_window))
        for c in with_window:
            window = await hot.read(c, max_sequence=10, count=1)
            assert window is not None and window[0].sequence == 5
    finally:
        await hot.drop(*conversations)
    assert await cluster_redis.exists(*keys) == 0


async def test_revocation_check_reads_both_slots(cluster_redis: aioredis.Redis) -> None:
    user, jti = uuid.uuid4().hex, uuid.uuid4().hex
    check = revocation_check(cluster_redis)
    now = time.time()
    claims = {"jti": jti, "sub": user, "iat": now}
    assert await check(claims) is None
    await Revocations(cluster_redis, access_ttl=60).deny(jti, expires_at=now + 60, now=now)
    assert await check(claims) == "logged out"
    await Revocations(cluster_redis, access_ttl=60).void_tokens_before(user, now + 1)
    assert await check({**claims, "jti": uuid.uuid4().hex}) == "revoked"


async def test_agent_events_of_every_tenant_reach_the_all_tenants_subscriber(
    redis_cluster: RedisCluster,
) -> None:
    # A fresh client (no command run yet): the subscription must load the slot map itself.
    publisher = redis_client.create_redis(redis_cluster.url, mode="cluster")
    subscriber = redis_client.create_redis(redis_cluster.url, mode="cluster")
    bus, listener = (
        EventBus(redis=publisher, poll_seconds=0.05),
        EventBus(redis=subscriber, poll_seconds=0.05),
    )
    # Tenants whose channels hash to every master: a PUBLISH anywhere reaches the one PSUBSCRIBE.
    # Drawn until each master has some (12 random ones miss a master 2% of the time).
    by_node: dict[int, list[str]] = {}
    while len(by_node) < 3 or min(len(v) for v in by_node.values()) < 4:
        tenant = f"t-{uuid.uuid4().hex[:8]}"
        by_node.setdefault(_node_of(redis_cluster, f"agents:events:{tenant}"), []).append(tenant)
    tenants = [t for found in by_node.values() for t in found[:4]]
    ready = asyncio.Event()
    received: list[str] = []

    async def on_ready() -> None:
        ready.set()

    async def follow() -> None:
        async for event in listener.subscribe(None, on_ready=on_ready):
            received.append(event.tenant_id)
            if len(received) == len(tenants):
                return

    task = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(ready.wait(), 5)
        for t in tenants:
            await bus.publish(
                AgentEvent(
                    change_type=ChangeType.DELETED,
                    tenant_id=t,
                    agent_id="agent-1",
                    version=1,
                    agent=None,
                    event_time_us=0,
                )
            )
        await asyncio.wait_for(task, 5)
        assert sorted(received) == sorted(tenants)
    finally:
        task.cancel()
        await listener.close()
        await publisher.aclose()
        await subscriber.aclose()


async def test_health_ping_fails_when_one_master_is_down() -> None:
    # A cluster of this test's own: it kills a master, which the session's cluster must not suffer.
    directory = Path(tempfile.mkdtemp(prefix="agentmesh-test-redis-cluster-"))
    cluster = RedisCluster(directory, node_timeout_ms=1000)
    client: aioredis.Redis | None = None
    try:
        cluster.start()
        client = redis_client.create_redis(cluster.url, mode="cluster")
        await redis_client.ping(client)
        cluster.nodes[2].kill()
        deadline = time.monotonic() + 15
        while True:  # the survivors mark it failed after cluster-node-timeout
            try:
                await redis_client.ping(client)
            except ClusterDownError as exc:
                assert "'fail'" in str(exc)
                break
            assert time.monotonic() < deadline, "health stayed ok with a master down"
            await asyncio.sleep(0.2)
    finally:
        if client is not None:
            await client.aclose()
        cluster.close()
        shutil.rmtree(directory, ignore_errors=True)
