"""A task cancelled during a Redis command ends, even when the command swallowed the cancellation
(Python 3.11's asyncio.wait_for inside redis-py: services/platform/cancellation.py)."""

import asyncio
import random

from services.platform.cancellation import raise_if_cancelled
from services.platform.redis_client import create_redis
from tests.helpers import REDIS_MODE

TRIES = 40


async def _cancel_at_random(redis, *, check: bool) -> int:
    """Loops of MGETs (a background job's shape) cancelled at a random moment; how many went on."""

    async def loop() -> None:
        while True:
            if check:
                raise_if_cancelled()
            await asyncio.sleep(0)
            await redis.mget("{cancellation-test}:a", "{cancellation-test}:b")

    went_on = 0
    for _ in range(TRIES):
        task = asyncio.create_task(loop())
        await asyncio.sleep(random.random() * 0.003)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done:
            went_on += 1
            while not task.done():  # cancelled again until it ends
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
    return went_on


async def test_background_loops_end_when_a_redis_command_swallowed_their_cancellation(redis_url):
    redis = create_redis(redis_url, mode=REDIS_MODE)
    try:
        await redis.ping()
        # Without raise_if_cancelled about half of these loops go on after their cancellation here.
        assert await _cancel_at_random(redis, check=True) == 0
    finally:
        await redis.aclose()
