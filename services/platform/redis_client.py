"""The Redis client: a real server when REDIS_URL is set, in-process fakeredis otherwise."""

from __future__ import annotations

import redis.asyncio as aioredis


def create_redis(url: str) -> aioredis.Redis:
    if url:
        return aioredis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=10,
        )
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
