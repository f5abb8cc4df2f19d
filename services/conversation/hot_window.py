"""The Redis hot window: the newest `size` messages of a conversation, in a sorted set scored by
sequence number, each member a message serialized as JSON.

Redis only makes reads fast; PostgreSQL is the system of record. Every Redis error is swallowed
(and logged): a read then reports "nothing usable" and the caller reads PostgreSQL; a write after a
commit simply does not happen. Readers check that what they get is exactly the sequence numbers
they expect, so a window with holes (a write lost while Redis was down, a FLUSHALL, a restart) is
noticed and refilled from PostgreSQL rather than served.

The key carries the conversation in a hash tag (`{conversation:<id>}:hot`), so on a Redis Cluster
whatever touches one conversation stays in one slot; the batched append, which touches many, is split
by slot. (Until step 14 the key was `conversation:hot:<id>`: windows under the old name are simply
never read again and expire within their TTL; the next read rebuilds each from PostgreSQL.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.conversation.models import Message
from services.platform.batching import Batcher
from services.platform.redis_client import is_cluster, slot_groups

log = logging.getLogger("agentmesh.conversation.hot_window")

KEY = "{{conversation:{conversation_id}}}:hot"

# Adds each message to its conversation's window, if that window exists: a missing window is rebuilt
# whole by the next reader, so an append never creates a window that holds just its own message.
# KEYS: the windows; ARGV: size, ttl, then a (sequence, message) pair per key.
_APPEND_IF_PRESENT = """
local size, ttl = tonumber(ARGV[1]), ARGV[2]
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', key, ARGV[2 * i + 1], ARGV[2 * i + 2])
    redis.call('ZREMRANGEBYRANK', key, 0, -(size + 1))
    redis.call('EXPIRE', key, ttl)
  end
end
return 0
"""


def _encode(message: Message) -> bytes:
    return json.dumps(message.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _decode(raw: bytes) -> Message:
    return Message.from_json(json.loads(raw))


class HotWindow:
    def __init__(self, redis: aioredis.Redis, *, size: int = 256, ttl_seconds: int = 24 * 3600):
        self.redis = redis
        self.size = size
        self.ttl_seconds = ttl_seconds
        self._append_script = redis.register_script(_APPEND_IF_PRESENT)
        # The appends of concurrent calls go to Redis as one script call.
        self._appends: Batcher[Message, None] = Batcher(self._append_many)

    @staticmethod
    def key(conversation_id: str) -> str:
        return KEY.format(conversation_id=conversation_id)

    async def append(self, message: Message) -> None:
        """Adds a committed message to its conversation's window, if the window exists."""
        await self._appends.submit(message)

    def _script_call(self, batch: Sequence[Message]) -> tuple[list[str], list[int | bytes]]:
        args: list[int | bytes] = [self.size, self.ttl_seconds]
        for m in batch:
            args += [m.sequence, _encode(m)]
        return [self.key(m.conversation_id) for m in batch], args

    async def _append_many(self, batch: list[Message]) -> list[None]:
        try:
            if not is_cluster(self.redis):
                keys, args = self._script_call(batch)
                await self._append_script(keys=keys, args=args)
            else:
                # A script's keys must share one slot: one call per slot, pipelined (one round trip
                # per node). EVAL, not EVALSHA: after a failover the new master may not know the
                # script, and a NOSCRIPT inside a pipeline would cost a second pass.
                keys = [self.key(m.conversation_id) for m in batch]
                async with self.redis.pipeline(transaction=False) as pipe:
                    for group in slot_groups(self.redis, keys):
                        group_keys, args = self._script_call([batch[i] for i in group])
                        pipe.eval(_APPEND_IF_PRESENT, len(group_keys), *group_keys, *args)
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("hot window append failed", extra={"fields": {"error": repr(exc)}})
        return [None] * len(batch)

    async def read(self, conversation_id: str, *, max_sequence: int, count: int) -> list[Message] | None:
        """Up to `count` messages with sequence <= max_sequence, newest first; None if Redis failed."""
        try:
            raw = await self.redis.zrevrangebyscore(
                self.key(conversation_id), max_sequence, "-inf", start=0, num=count
            )
        except (RedisError, OSError) as exc:
            log.warning("hot window read failed", extra={"fields": {"error": repr(exc)}})
            return None
        # Without withscores the members come back alone, as bytes (the client does not decode).
        return [_decode(cast(bytes, r)) for r in raw]

    async def fill(self, conversation_id: str, messages: Sequence[Message]) -> None:
        """Replaces the window with messages read from PostgreSQL, keeping only the newest `size`
        (entries of another branch, which share sequence numbers, go)."""
        if not messages:
            return
        key = self.key(conversation_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.zadd(key, {_encode(m): m.sequence for m in messages})
                pipe.zremrangebyrank(key, 0, -(self.size + 1))
                pipe.expire(key, self.ttl_seconds)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("hot window fill failed", extra={"fields": {"error": repr(exc)}})

    async def drop(self, *conversation_ids: str) -> None:
        if not conversation_ids:
            return
        try:
            await self.redis.delete(*(self.key(c) for c in conversation_ids))
        except (RedisError, OSError) as exc:
            log.warning("hot window drop failed", extra={"fields": {"error": repr(exc)}})


class NoHotWindow:
    """No window: every read goes to the database. For the embedded default, whose Redis is
    fakeredis in the same process: a window there is a second copy of what SQLite reads as fast,
    kept up at the price of Lua scripts and RESP parsing on the loop."""

    size = 0

    async def append(self, message: Message) -> None:
        return None

    async def read(self, conversation_id: str, *, max_sequence: int, count: int) -> list[Message] | None:
        return None

    async def fill(self, conversation_id: str, messages: Sequence[Message]) -> None:
        return None

    async def drop(self, *conversation_ids: str) -> None:
        return None
