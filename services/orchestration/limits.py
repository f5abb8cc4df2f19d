"""Per-tenant request rate and concurrent-run limits in Redis (tier limits from the token's tier)."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from services.platform import errors
from services.platform.errors import Violation
from services.platform.tiers import TierLimits

RATE_KEY = "orchestration:rate:{tenant}:{window}"
ACTIVE_KEY = "orchestration:active-runs:{tenant}"


class RunLimits:
    """A fixed one-minute window counter (INCR+EXPIRE) and a sorted set of the tenant's live runs.

    A live run's score is when its slot lapses; the worker refreshes it with its lease, so runs of
    a dead instance free their slots on their own.
    """

    def __init__(
        self, redis: aioredis.Redis, *, slot_ttl_seconds: float, clock: Callable[[], float] = time.time
    ):
        self._redis = redis
        self._slot_ttl = slot_ttl_seconds
        self._clock = clock

    async def check_rate(self, tenant_id: str, limits: TierLimits) -> None:
        now = self._clock()
        window = int(now // 60)
        key = RATE_KEY.format(tenant=tenant_id, window=window)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
        if count > limits.requests_per_minute:
            raise errors.ResourceExhausted(
                f"more than {limits.requests_per_minute} messages per minute for this tenant",
                retry_after=(window + 1) * 60 - now,
                violations=[
                    Violation("requests_per_minute", f"tier {limits.name}: {limits.requests_per_minute}")
                ],
            )

    async def reserve(self, tenant_id: str, run_id: str, limits: TierLimits) -> None:
        """Takes a concurrent-run slot for `run_id` or raises RESOURCE_EXHAUSTED."""
        now = self._clock()
        key = ACTIVE_KEY.format(tenant=tenant_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {run_id: now + self._slot_ttl})
            pipe.zcard(key)
            pipe.expire(key, int(self._slot_ttl) + 60)
            _, _, count, _ = await pipe.execute()
        if count > limits.concurrent_runs:
            await self._redis.zrem(key, run_id)
            raise errors.ResourceExhausted(
                f"more than {limits.concurrent_runs} concurrent runs for this tenant",
                retry_after=1.0,
                violations=[Violation("concurrent_runs", f"tier {limits.name}: {limits.concurrent_runs}")],
            )

    async def refresh(self, tenant_id: str, run_id: str) -> None:
        await self._redis.zadd(
            ACTIVE_KEY.format(tenant=tenant_id), {run_id: self._clock() + self._slot_ttl}, xx=True
        )

    async def hold(self, tenant_id: str, run_id: str) -> None:
        """Takes the slot back for a run whose wait ended: its answer is in, so it runs even when
        the tenant is at its limit (refusing now would strand it until its wait expires)."""
        await self._redis.zadd(ACTIVE_KEY.format(tenant=tenant_id), {run_id: self._clock() + self._slot_ttl})

    async def release(self, tenant_id: str, run_id: str) -> None:
        await self._redis.zrem(ACTIVE_KEY.format(tenant=tenant_id), run_id)
