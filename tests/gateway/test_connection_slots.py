"""ConnectionSlots on the suite's own Redis: two processes' worth of slots (two instances, as two
gateway workers hold them) share one limit per user; a release frees a slot; a holder that stops
renewing (a killed worker) loses its slots after the lease; a key Redis lost comes back on the next
renewal; a Redis that cannot answer admits the socket uncounted instead of refusing it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.connection_slots import _ACQUIRE, ConnectionSlots
from services.platform.redis_client import create_redis
from tests.helpers import REDIS_MODE, free_port


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = create_redis(redis_url, mode=REDIS_MODE, max_connections=8)
    yield client
    await client.aclose()


def user() -> str:
    return f"slots-{uuid.uuid4().hex[:8]}"


async def test_two_holders_share_one_limit_and_release_frees(redis: aioredis.Redis) -> None:
    a, b = ConnectionSlots(redis), ConnectionSlots(redis)
    name = user()
    first = [await a.acquire("t", name, 3), await b.acquire("t", name, 3), await a.acquire("t", name, 3)]
    assert all(first)
    assert await b.acquire("t", name, 3) is None
    assert await a.acquire("t", name, 3) is None
    assert await b.acquire("other-tenant", name, 3) is not None  # another tenant's user of that id
    assert first[1] is not None
    await b.release(first[1])
    assert await b.acquire("t", name, 3) is not None
    assert await redis.zcard(ConnectionSlots.key("t", name)) == 3
    await a.close()
    await b.close()


async def test_a_holder_that_stops_renewing_loses_its_slots_after_the_lease(redis: aioredis.Redis) -> None:
    dead, alive = ConnectionSlots(redis, lease_seconds=0.6), ConnectionSlots(redis, lease_seconds=0.6)
    name = user()
    assert await dead.acquire("t", name, 2)
    assert await alive.acquire("t", name, 2)
    await dead.close()  # no release, no more renewals: a killed worker
    assert await alive.acquire("t", name, 2) is None
    await asyncio.sleep(1.0)
    # The dead holder's slot lapsed; the live one's was renewed and still counts.
    assert await alive.acquire("t", name, 2) is not None
    assert await alive.acquire("t", name, 2) is None
    await alive.close()


async def test_a_lost_key_is_reasserted_by_the_next_renewal(redis: aioredis.Redis) -> None:
    slots = ConnectionSlots(redis, lease_seconds=30)
    name = user()
    assert await slots.acquire("t", name, 2)
    assert await slots.acquire("t", name, 2)
    await redis.delete(ConnectionSlots.key("t", name))  # Redis restarted empty, or was flushed
    await slots.refresh()
    assert await redis.zcard(ConnectionSlots.key("t", name)) == 2
    assert await slots.acquire("t", name, 2) is None
    assert 0 < await redis.pttl(ConnectionSlots.key("t", name)) <= 30_000
    await slots.close()


async def test_unreachable_redis_admits_uncounted() -> None:
    down = create_redis(f"redis://127.0.0.1:{free_port()}/0", max_connections=2)
    slots = ConnectionSlots(down, lease_seconds=30, timeout_seconds=0.5)
    try:
        slot = await slots.acquire("t", user(), 1)
        assert slot is not None
        assert slots.held() == 1
        await slots.release(slot)  # logged, not raised
        assert slots.held() == 0
    finally:
        await slots.close()
        await down.aclose()


async def test_a_retried_acquire_finds_its_own_slot(redis: aioredis.Redis) -> None:
    """The script sent again by the client's retry (its first answer lost) with the same slot id:
    taken, not refused for the slot it took itself, and counted once."""
    key = ConnectionSlots.key("t", user())
    assert await redis.eval(_ACQUIRE, 1, key, 1, 30_000, "slot-a") == 1
    assert await redis.eval(_ACQUIRE, 1, key, 1, 30_000, "slot-a") == 1
    assert await redis.eval(_ACQUIRE, 1, key, 1, 30_000, "slot-b") == 0
    assert await redis.zcard(key) == 1
