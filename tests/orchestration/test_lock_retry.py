"""A `SET NX` sent again by the Redis client's retry (its first try applied, its answer lost with
the connection) finds the caller's own value and counts as taken (issue 18): the session lock here;
the run lease's re-assertion uses the same `SET … NX GET` (events.RunEvents.renew_lease). On the
suite's Redis, in the suite's mode."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.orchestration.store import SESSION_LOCK_KEY, SessionLocks
from services.platform.redis_client import create_redis
from tests.helpers import REDIS_MODE


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = create_redis(redis_url, mode=REDIS_MODE, max_connections=8)
    yield client
    await client.aclose()


async def test_a_retried_take_of_the_session_lock_is_the_holders(redis: aioredis.Redis) -> None:
    locks = SessionLocks(redis)
    key = SESSION_LOCK_KEY.format(session_id=uuid.uuid4().hex)
    mine, theirs = b"token-mine", b"token-theirs"
    assert await locks._take_all([(key, mine)]) == [True]
    # The same SET again, as the retry sends it: still ours.
    assert await locks._take_all([(key, mine)]) == [True]
    assert await locks._take_all([(key, theirs)]) == [False]
    assert await redis.get(key) == mine
