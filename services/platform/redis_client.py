"""The Redis client: a real server when REDIS_URL is set, in-process fakeredis otherwise."""

from __future__ import annotations

import redis.asyncio as aioredis


def create_redis(url: str) -> aioredis.Redis:
    if url:
        # A blocking pool: past max_connections a command waits (up to 5 s) for a free connection
        # instead of failing, so a burst degrades into latency, not errors.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=512,
            timeout=5,
            decode_responses=False,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=10,
        )
        return aioredis.Redis.from_pool(pool)  # closing the client closes the pool
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
