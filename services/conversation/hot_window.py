"""The Redis hot window: the newest `size` messages of a conversation, in a sorted set scored by
sequence number, each member a message serialized as JSON.

Redis only makes reads fast; PostgreSQL is the system of record. Every Redis error is swallowed
(and logged): a read then reports "nothing usable" and the caller reads PostgreSQL; a write after a
commit simply does not happen. Readers check that what they get is exactly the sequence numbers
they expect, so a window with holes (a write lost while Redis was down, a FLUSHALL, a restart) is
noticed and refilled from PostgreSQL rather than served.
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

log = logging.getLogger("agentmesh.conversation.hot_window")

KEY = "conversation:hot:{conversation_id}"

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

    async def _append_many(self, batch: list[Message]) -> list[None]:
        args: list[int | bytes] = [self.size, self.ttl_seconds]
        for m in batch:
            args += [m.sequence, _encode(m)]
        try:
            await self._append_script(keys=[self.key(m.conversation_id) for m in batch], args=args)
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
        """Writes messages (read from PostgreSQL) into the window, keeping only the newest `size`."""
        if not messages:
            return
        key = self.key(conversation_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
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
