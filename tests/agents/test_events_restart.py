"""A change-event subscription ends when Redis restarts, even though the client retries commands
(redis_client.retry_policy): re-subscribing silently would lose what was published meanwhile
without the watcher knowing, and only a watcher that hears of the gap empties its cache."""

import asyncio

import pytest
import redis.exceptions

from services.agents.events import EventBus
from services.platform.redis_client import create_redis
from tests.helpers import RedisServer, free_port


async def test_a_subscription_ends_when_redis_restarts(tmp_path):
    server = RedisServer(tmp_path, free_port())
    server.start()
    client = create_redis(server.url, retry_seconds=8)
    bus = EventBus(redis=client, poll_seconds=0.1)
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    async def follow() -> None:
        async for _ in bus.subscribe(None, on_ready=on_ready):
            pass

    task = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(ready.wait(), 5)
        await asyncio.to_thread(server.restart, 0.3)
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        await bus.close()
        await client.aclose()
        server.close()
