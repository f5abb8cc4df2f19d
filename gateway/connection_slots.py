"""WebSocket slots per user, counted in Redis so the limit holds across gateway workers and replicas.

Each user has one sorted set of connection ids scored by their lease's expiry (Redis server time,
so the gateways' clocks do not matter). Taking a slot drops expired members and adds one only below
the limit, in one script; a process re-asserts the leases of every socket it holds every third of
the lease, in one pipelined round trip, so a worker that dies without closing its sockets frees
their slots when their leases lapse, and a Redis that lost its keys (restart, FLUSHALL) has them
back within a third of the lease. The key names the user in a hash tag: one key per operation, so
it works on Redis Cluster as on one server.

When Redis cannot answer within `timeout_seconds`, a socket is admitted uncounted (logged) rather
than refused: the chat needs no Redis of the gateway's own, and the per-process
`AGENTMESH_WS_MAX_CONNECTIONS` still bounds a process; the next renewal counts it once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("agentmesh.gateway")

KEY = "{{user:{tenant}:{user}}}:ws-connections"

# KEYS[1] the user's set; ARGV limit, lease ms, connection id. 1 taken, 0 full. A slot already there
# was taken by this very call (the client's retry of a script whose answer was lost): taken, not
# counted against itself.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1] the user's set; ARGV lease ms, connection ids. ZADD without XX: a lost key comes back.
_REFRESH = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""


class ConnectionSlots:
    """`await acquire(tenant, user, limit)` -> a slot id, or None when the user already holds
    `limit`; `await release(slot)` when the socket closes. Leases renew while slots are held."""

    def __init__(self, redis: aioredis.Redis, *, lease_seconds: float = 30.0, timeout_seconds: float = 2.0):
        self._redis = redis
        # The client may retry a lost connection for longer; a socket's open waits this long at most.
        self._timeout = timeout_seconds
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._held: dict[str, set[str]] = {}  # key -> connection ids held by this process
        self._slot_key: dict[str, str] = {}
        self._refresher: asyncio.Task[None] | None = None
        # A release waits for a refresh in flight, which would otherwise re-add the slot it removes.
        self._lock = asyncio.Lock()

    @staticmethod
    def key(tenant: str, user: str) -> str:
        return KEY.format(tenant=tenant, user=user)

    async def acquire(self, tenant: str, user: str, limit: int) -> str | None:
        key, slot = self.key(tenant, user), uuid.uuid4().hex
        try:
            # EVAL, not EVALSHA: a restarted (or failed-over) Redis has no scripts loaded.
            taken = await asyncio.wait_for(
                self._redis.eval(_ACQUIRE, 1, key, limit, self._lease_ms, slot), self._timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("WebSocket slot not counted: Redis failed", extra={"fields": {"error": repr(exc)}})
            taken = 1
        if not taken:
            return None
        self._held.setdefault(key, set()).add(slot)
        self._slot_key[slot] = key
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_while_held())
        return slot

    async def release(self, slot: str) -> None:
        key = self._slot_key.pop(slot, None)
        if key is None:
            return
        slots = self._held.get(key, set())
        slots.discard(slot)
        if not slots:
            self._held.pop(key, None)
        try:
            async with asyncio.timeout(self._timeout):
                async with self._lock:
                    await self._redis.zrem(key, slot)
        except (RedisError, OSError, TimeoutError) as exc:
            # The lease lapses by itself.
            log.warning("WebSocket slot not released", extra={"fields": {"error": repr(exc)}})

    def held(self) -> int:
        """Slots this process holds (all users)."""
        return len(self._slot_key)

    async def refresh(self) -> None:
        """Renews the lease of every slot this process holds: one pipelined round trip (one per
        node on a cluster)."""
        async with self._lock:
            if not self._held:
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, slots in self._held.items():
                    pipe.eval(_REFRESH, 1, key, self._lease_ms, *slots)
                await pipe.execute()

    async def _refresh_while_held(self) -> None:
        while self._held:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                log.warning("WebSocket leases not renewed", extra={"fields": {"error": repr(exc)}})

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
