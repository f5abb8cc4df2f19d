"""Per-tenant request rate and concurrent-run limits in Redis (tier limits from the token's tier)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from services.platform import errors
from services.platform.batching import Batcher
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
        # Concurrent admissions share their round trips (platform.batching.Batcher, no timer).
        self._rates: Batcher[str, int] = Batcher(self._count, max_batch=512)
        self._slots: Batcher[tuple[str, str], int] = Batcher(self._take_slots, max_batch=512)

    async def check_rate(self, tenant_id: str, limits: TierLimits) -> None:
        now = self._clock()
        window = int(now // 60)
        count = await self._rates.submit(RATE_KEY.format(tenant=tenant_id, window=window))
        if count > limits.requests_per_minute:
            raise errors.ResourceExhausted(
                f"more than {limits.requests_per_minute} messages per minute for this tenant",
                retry_after=(window + 1) * 60 - now,
                violations=[
                    Violation("requests_per_minute", f"tier {limits.name}: {limits.requests_per_minute}")
                ],
            )

    async def _count(self, keys: list[str]) -> list[int]:
        """Each request's number in its window: one INCRBY per window key for the batch's requests
        (they count in order, as one INCR each would), in one round trip."""
        wanted = collections.Counter(keys)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, n in wanted.items():
                pipe.incrby(key, n)
                pipe.expire(key, 120)
            replies = await pipe.execute()
        totals = {key: replies[2 * i] for i, key in enumerate(wanted)}
        seen: collections.Counter[str] = collections.Counter()
        numbers = []
        for key in keys:
            seen[key] += 1
            numbers.append(int(totals[key]) - wanted[key] + seen[key])
        return numbers

    async def reserve(self, tenant_id: str, run_id: str, limits: TierLimits) -> None:
        """Takes a concurrent-run slot for `run_id` or raises RESOURCE_EXHAUSTED."""
        count = await self._slots.submit((tenant_id, run_id))
        if count > limits.concurrent_runs:
            await self._redis.zrem(ACTIVE_KEY.format(tenant=tenant_id), run_id)
            raise errors.ResourceExhausted(
                f"more than {limits.concurrent_runs} concurrent runs for this tenant",
                retry_after=1.0,
                violations=[Violation("concurrent_runs", f"tier {limits.name}: {limits.concurrent_runs}")],
            )

    async def _take_slots(self, wanted: list[tuple[str, str]]) -> list[int]:
        """Each run's count of live runs once its slot is added: per tenant one MULTI with a ZADD and
        a ZCARD per run (the counts a reserve each would have seen), the tenants' in parallel."""
        now = self._clock()
        tenants: dict[str, list[int]] = {}
        for index, (tenant_id, _) in enumerate(wanted):
            tenants.setdefault(tenant_id, []).append(index)

        async def take(tenant_id: str, indexes: list[int]) -> list[int]:
            key = ACTIVE_KEY.format(tenant=tenant_id)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", now)
                for index in indexes:
                    pipe.zadd(key, {wanted[index][1]: now + self._slot_ttl})
                    pipe.zcard(key)
                pipe.expire(key, int(self._slot_ttl) + 60)
                replies = await pipe.execute()
            return [int(replies[2 + 2 * i]) for i in range(len(indexes))]

        counts = [0] * len(wanted)
        taken = await asyncio.gather(*(take(t, indexes) for t, indexes in tenants.items()))
        for indexes, tenant_counts in zip(tenants.values(), taken, strict=True):
            for index, count in zip(indexes, tenant_counts, strict=True):
                counts[index] = count
        return counts

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
