"""Run events in Redis: one stream per run (`{run:<run_id>}:events`) with explicit entry ids
"0-<event_id>", so "after event N" is simply XREAD from "0-N" on any instance.

Also: each session's stream of run ids (`{session:<id>}:runs`, for Chat), the run lease and the
cancel flag. Entries are compact JSON of the domain RunEvent. A run's keys share the hash tag
`{run:<id>}`, so the terminal MULTI and the lease renewal stay in one Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.typing import KeyT, StreamIdT

from services.orchestration.models import (
    CancelMode,
    EventType,
    ModelFallback,
    RunError,
    RunEvent,
    RunToolCall,
    ToolCallStatus,
    ToolExecution,
    Usage,
)
from services.platform import errors
from services.platform.redis_client import DEFAULT_RETRY_SECONDS, create_redis, is_cluster

# Doubled braces: a literal hash tag around the formatted id.
EVENTS_KEY = "{{run:{run_id}}}:events"
LEASE_KEY = "{{run:{run_id}}}:lease"
CANCEL_KEY = "{{run:{run_id}}}:cancel"
SESSION_RUNS_KEY = "{{session:{session_id}}}:runs"

log = logging.getLogger("agentmesh.orchestration.runs")


def stream_client(
    url: str, *, max_connections: int, mode: str = "standalone", retry_seconds: float = DEFAULT_RETRY_SECONDS
) -> aioredis.Redis:
    """Orchestration's own Redis pool (events, leases, limits): a blocking pool of a constant size,
    since the event hub (hub.py) holds no connection per stream. Commands ride through a Redis
    restart as the shared client's do (`retry_policy`): a blocking read cut by it is sent again
    from the same position, a write waits for Redis to be back."""
    return create_redis(url, mode=mode, max_connections=max_connections, retry_seconds=retry_seconds)


# The event type codes in the stream entries (unchanged, so instances of every version read them).
EVENT_TYPE_CODES = {t: code for code, t in enumerate(EventType, start=1)}
_EVENT_TYPES = {code: t for t, code in EVENT_TYPE_CODES.items()}


def _text(value: bytes | str) -> str:
    """A Redis reply as text: the pools here never decode (bytes), redis-py's types allow either."""
    return value.decode() if isinstance(value, bytes) else value


def _event_id(entry_id: bytes | str) -> int:
    """The N of a run stream's entry id "0-N"."""
    return int(_text(entry_id).split("-", 1)[1])


class StaleWriter(Exception):
    """An event id was already taken: another party (the lease sweeper) wrote this run's end."""


def encode(event: RunEvent) -> bytes:
    data: dict[str, Any] = {
        "r": event.run_id,
        "s": event.session_id,
        "t": EVENT_TYPE_CODES[event.type],
        "v": event.agent_version,
    }
    data["us"] = event.event_time_us
    if event.text_delta:
        data["d"] = event.text_delta
    if event.final_message:
        data["f"] = event.final_message
    if event.usage is not None:
        data["u"] = list(dataclasses.astuple(event.usage))
    if event.model:
        data["m"] = event.model
    if event.fallbacks:
        data["fb"] = [[f.model, f.reason] for f in event.fallbacks]
    if event.error is not None:
        data["e"] = [event.error.code, event.error.message]
    if event.tool_calls:
        data["tc"] = [_call_entry(c) for c in event.tool_calls]
    if event.structured is not None:
        data["j"] = event.structured
    return json.dumps(data, separators=(",", ":")).encode()


def decode(entry_id: bytes | str, raw: bytes | str) -> RunEvent:
    data = json.loads(raw)
    return RunEvent(
        event_id=_event_id(entry_id),
        run_id=data["r"],
        session_id=data["s"],
        type=_EVENT_TYPES[data["t"]],
        text_delta=data.get("d", ""),
        final_message=data.get("f", ""),
        usage=Usage(*data["u"]) if "u" in data else None,
        error=RunError(*data["e"]) if "e" in data else None,
        agent_version=data.get("v", 0),
        # "at" (float seconds): entries written before times were microseconds.
        event_time_us=data["us"] if "us" in data else round(data.get("at", 0) * 1_000_000),
        model=data.get("m", ""),
        fallbacks=tuple(ModelFallback(*f) for f in data.get("fb", ())),
        tool_calls=tuple(_call_of(c) for c in data.get("tc", ())),
        structured=data.get("j"),
    )


def _call_entry(c: RunToolCall) -> dict[str, Any]:
    entry: dict[str, Any] = {"i": c.id, "n": c.name, "a": c.arguments_json, "st": c.status.value}
    entry.update(sp=c.step, x=c.execution.value)
    if c.requires_approval:
        entry["ra"] = 1
    if c.output:
        entry["o"] = c.output
    if c.is_error:
        entry["er"] = 1
    if c.duration_ms:
        entry["ms"] = c.duration_ms
    return entry


def _call_of(entry: dict[str, Any]) -> RunToolCall:
    return RunToolCall(
        id=entry["i"],
        name=entry["n"],
        arguments_json=entry["a"],
        status=ToolCallStatus(entry["st"]),
        step=entry["sp"],
        execution=ToolExecution(entry["x"]),
        requires_approval=bool(entry.get("ra")),
        output=entry.get("o", ""),
        is_error=bool(entry.get("er")),
        duration_ms=entry.get("ms", 0),
    )


class RunEvents:
    """Appends and reads run event streams; also holds a run's lease and cancel flag."""

    def __init__(self, redis: aioredis.Redis, *, block_ms: int, retention_seconds: int):
        self._redis = redis
        self._block_ms = block_ms
        self._retention = retention_seconds
        # Blocking reads in flight (each holds a connection for up to block_ms).
        self._reads = 0
        self._no_reads = asyncio.Event()
        self._no_reads.set()
        self._closing = False

    async def _read(self, streams: dict[KeyT, StreamIdT], count: int) -> Any:
        if self._closing:
            # The server has stopped: a read starting now would open a connection nobody closes.
            raise errors.Unavailable("the orchestration instance is stopping", reason="STOPPING")
        self._reads += 1
        self._no_reads.clear()
        try:
            return await self._redis.xread(streams, count=count, block=self._block_ms)
        finally:
            self._reads -= 1
            if not self._reads:
                self._no_reads.set()

    async def reads_finished(self) -> None:
        """Returns once no blocking read holds a connection (at most one block time and a margin)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_reads.wait(), self._block_ms / 1000 + 1)

    async def close(self) -> None:
        """Closes the client (when it is this object's own pool): after the server's drain, once the
        reads its stop cancelled have handed their connections back."""
        self._closing = True
        await self.reads_finished()
        await self._redis.aclose()

    async def append(self, event: RunEvent) -> None:
        key = EVENTS_KEY.format(run_id=event.run_id)
        try:
            if event.type.terminal:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(key, {"e": encode(event)}, id=f"0-{event.event_id}")
                    pipe.expire(key, self._retention)
                    pipe.delete(LEASE_KEY.format(run_id=event.run_id), CANCEL_KEY.format(run_id=event.run_id))
                    await pipe.execute()
            else:
                await self._redis.xadd(key, {"e": encode(event)}, id=f"0-{event.event_id}")
        except ResponseError as exc:
            if "equal or smaller" in str(exc):
                raise StaleWriter(event.run_id) from None
            raise

    async def last_event_id(self, run_id: str) -> int:
        entries = await self._redis.xrevrange(EVENTS_KEY.format(run_id=run_id), count=1)
        newest = entries[0][0] if entries else None
        return 0 if newest is None else _event_id(newest)

    async def exists(self, run_id: str) -> bool:
        return bool(await self._redis.exists(EVENTS_KEY.format(run_id=run_id)))

    async def tail(self, run_id: str, after_event_id: int) -> AsyncIterator[RunEvent]:
        """Every event after `after_event_id`, live, until (and including) the run's terminal event."""
        key = EVENTS_KEY.format(run_id=run_id)
        last = f"0-{after_event_id}"
        while True:
            reply = await self._read({key: last}, 256)
            for _key, entries in reply or ():
                for entry_id, fields in entries:
                    last = _text(entry_id)
                    event = decode(entry_id, fields[b"e"])
                    yield event
                    if event.type.terminal:
                        return

    # Sessions' run announcements (Chat follows every run of its session) ------------------------

    async def announce(self, session_id: str, run_id: str) -> None:
        key = SESSION_RUNS_KEY.format(session_id=session_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"run": run_id.encode()}, maxlen=1000, approximate=True)
            pipe.expire(key, self._retention)
            await pipe.execute()

    async def session_position(self, session_id: str) -> str:
        entries = await self._redis.xrevrange(SESSION_RUNS_KEY.format(session_id=session_id), count=1)
        newest = entries[0][0] if entries else None
        return "0-0" if newest is None else _text(newest)

    async def follow_session(self, session_id: str, position: str) -> AsyncIterator[str]:
        key = SESSION_RUNS_KEY.format(session_id=session_id)
        while True:
            reply = await self._read({key: position}, 64)
            for _key, entries in reply or ():
                for entry_id, fields in entries:
                    position = _text(entry_id)
                    yield _text(fields[b"run"])

    # Lease and cancel flag ------------------------------------------------------------------------

    async def take_lease(self, run_id: str, owner: str, ttl_seconds: float) -> None:
        await self._redis.set(LEASE_KEY.format(run_id=run_id), owner.encode(), px=int(ttl_seconds * 1000))

    async def renew_lease(
        self, run_id: str, owner: str, ttl_seconds: float
    ) -> tuple[bool, CancelMode | None]:
        """Extends the lease if we still hold it; also returns a cancel requested from anywhere.

        A missing lease (Redis lost its keys: a restart without persistence, a flush, a failover to a
        replica that had not seen it) is taken again (SET NX): the run is alive here, and failing it
        for Redis's loss would throw away a good answer. Held by another owner: the run is theirs.
        """
        lease, cancel = LEASE_KEY.format(run_id=run_id), CANCEL_KEY.format(run_id=run_id)
        holder, mode = await self._redis.mget(lease, cancel)
        if holder is None:
            # NX with GET: a retried SET whose first try took the lease (its answer lost with the
            # connection) finds our own name there, not a rival's (Redis 7.0+).
            before = await self._redis.set(
                lease, owner.encode(), nx=True, get=True, px=int(ttl_seconds * 1000)
            )
            if before is not None and _text(cast(bytes, before)) != owner:
                return False, None
            log.warning("run lease was missing; re-asserted", extra={"fields": {"run_id": run_id}})
        elif _text(holder) != owner:
            return False, None
        else:
            await self._redis.pexpire(lease, int(ttl_seconds * 1000))
        return True, CancelMode(_text(mode)) if mode else None

    async def cancels_requested(self, run_ids: list[str]) -> list[CancelMode | None]:
        """The cancel requested of each run, if any, in one round trip (one batch per node on a
        cluster)."""
        modes = await self._get_many([CANCEL_KEY.format(run_id=r) for r in run_ids])
        return [CancelMode(_text(m)) if m else None for m in modes]

    async def lease_holders(self, run_ids: list[str]) -> list[str | None]:
        holders = await self._get_many([LEASE_KEY.format(run_id=r) for r in run_ids])
        return [None if h is None else _text(h) for h in holders]

    async def _get_many(self, keys: list[str]) -> list[Any]:
        if not keys:
            return []
        if is_cluster(self._redis):
            # Each run's keys are in their own slot and redis-py refuses MGET in a cluster pipeline:
            # GETs in one pipeline, which it sends as one batch per node.
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                return list(await pipe.execute())
        return list(await self._redis.mget(keys))

    async def request_cancel(self, run_id: str, mode: CancelMode) -> None:
        await self._redis.set(CANCEL_KEY.format(run_id=run_id), mode.value.encode(), ex=self._retention)
