"""The event hub: one per orchestration process, between the run workers, the readers and Redis.

- A run executing here `publish`es its events to the hub (synchronously): readers on this instance
  get them at once from memory, without a Redis round trip. One writer task sends every run's
  pending events to Redis in one pipeline per round trip (XADD with the explicit ids "0-<event_id>",
  the terminal event with the stream's expiry and the lease's removal), so a reader on another
  instance sees each event one round trip after it was published.
- Readers of runs executing elsewhere (JoinRun or Chat on another instance) and Chat's session
  announcements are served by one multiplexed reader per process: one XREAD BLOCK over every such
  stream, interrupted through a per-process wake stream when a stream is added, fanned out in
  process. On Redis Cluster (no multi-slot XREAD) it polls: one pipeline of non-blocking XREADs per
  tick, which redis-py sends as one batch per node. Either way no stream holds a Redis connection
  of its own: the process needs a constant number of them.
- Every reader has a bounded buffer: a client that stops reading is cut (RESOURCE_EXHAUSTED, saying
  to resume with JoinRun after the last event it got) instead of growing the process's memory.
- While Redis is unreachable the writer keeps each run's events and retries with backoff; local
  readers keep streaming. Past `redis_buffer_events` unwritten events a run's next publish raises
  UNAVAILABLE (the worker fails the run, saying so).
- `in_memory` (the embedded default, whose Redis is fakeredis inside this process, read by no other
  process): a run's events stay in the hub for the retention, as long as Redis would keep them,
  and are not copied into Redis, where each XADD cost a chat about 60 us of the loop's time (half
  of a chat's Redis commands). A run that leaves the hub before its end (a pause, a lost lease)
  first has its events written to Redis, for whoever continues it; the terminal event still removes
  the lease and the cancel flag there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ClusterDownError, RedisError, ResponseError, TryAgainError

from services.orchestration.events import (
    CANCEL_KEY,
    EVENTS_KEY,
    LEASE_KEY,
    SESSION_RUNS_KEY,
    RunEvents,
    StaleWriter,
    _text,
    decode,
    encode,
)
from services.orchestration.models import EventType, RunEvent
from services.platform import errors
from services.platform.redis_client import is_cluster

log = logging.getLogger("agentmesh.orchestration.hub")

T = TypeVar("T")
# Events sent in one pipeline at most (a round trip stays short; the rest go in the next).
MAX_BATCH = 4096
# Entries per stream per XREAD/XRANGE call.
READ_COUNT = 512
# A finished run's events stay in memory this long, for readers that arrive just after its end.
LINGER_SECONDS = 5.0
# Refusals that are an outage, not an answer (a cluster without a master for a slot, a resharding).
RETRYABLE = (ClusterDownError, TryAgainError)
# The cluster poll's tick (no blocking multi-slot read there).
CLUSTER_POLL_SECONDS = 0.02


class _Reader(Generic[T]):
    """One stream's consumer: a bounded buffer the hub fills without waiting and the consumer drains.
    Overflow drops what it holds (the memory is the point) and marks it cut."""

    __slots__ = ("cut", "error", "items", "limit", "ready")

    def __init__(self, limit: int):
        self.items: collections.deque[T] = collections.deque()
        self.limit = limit
        self.ready = asyncio.Event()
        self.cut = False
        self.error: errors.AgentmeshError | None = None

    def put(self, item: T) -> None:
        if self.cut:
            return
        if len(self.items) >= self.limit:
            self.cut = True
            self.items.clear()
        else:
            self.items.append(item)
        self.ready.set()

    def fail(self, error: errors.AgentmeshError) -> None:
        self.error = error
        self.ready.set()

    async def next(self) -> T | None:
        """The next item; None once cut (the caller says how to resume); raises a failure."""
        while not self.items:
            if self.cut:
                return None
            if self.error is not None:
                raise self.error
            self.ready.clear()
            await self.ready.wait()
        if self.cut:
            return None
        return self.items.popleft()


class _LocalRun:
    """A run executing on this instance: its events in memory, its readers here, its Redis backlog."""

    def __init__(self, run_id: str):
        self.key = EVENTS_KEY.format(run_id=run_id)
        self.log: list[RunEvent] = []
        self.readers: set[_Reader[RunEvent]] = set()
        self.unwritten = 0
        self.written_upto = 0
        # Highest event id a pipeline that failed midway may have written (its retry may then find
        # its own entry: "equal or smaller" is not a stale writer there).
        self.attempted_upto = 0
        self.stale = False
        # In memory mode: its events are written to Redis too (it left, or leaves, the hub unended).
        self.spilled = False
        self.failure: errors.AgentmeshError | None = None
        self.progress = asyncio.Event()
        self.ended = False


# A run's event waiting for the writer, and whether Redis gets it (in memory mode only when spilled).
_Pending = tuple[_LocalRun, RunEvent, bool]


class _Watch:
    """A stream read from Redis by the multiplexed reader: its position and its readers."""

    def __init__(self, key: str, position: str, *, runs: bool):
        self.key = key
        self.position = position
        self.runs = runs  # a run's events (else a session's run announcements)
        self.readers: set[_Reader[Any]] = set()


class EventHub(RunEvents):
    """RunEvents with the hub in front: `publish`/`append` of runs executing here, `tail` and
    `follow_session` served from memory or the multiplexed reader. Leases, cancel flags and
    announcements are RunEvents' own."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        block_ms: int,
        retention_seconds: int,
        reader_buffer_events: int = 2000,
        redis_buffer_events: int = 10000,
        in_memory: bool = False,
    ):
        super().__init__(redis, block_ms=block_ms, retention_seconds=retention_seconds)
        self._in_memory = in_memory
        self._linger_seconds = float(retention_seconds) if in_memory else LINGER_SECONDS
        self._reader_limit = reader_buffer_events
        self._redis_limit = redis_buffer_events
        self._local: dict[str, _LocalRun] = {}
        self._pending: collections.deque[_Pending] = collections.deque()
        self._has_pending = asyncio.Event()
        # Set after each batch the writer settled (close waits for the backlog with it).
        self._flushed = asyncio.Event()
        self._watches: dict[str, _Watch] = {}
        self._watches_changed = asyncio.Event()
        self._wake_key = f"{{hub:{uuid.uuid4().hex}}}:wake"
        self._wake_position = "0-0"
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._lingering_tasks: set[asyncio.Task[None]] = set()
        self._cluster = is_cluster(redis)
        self._stopped = False

    # Writing ---------------------------------------------------------------------------------------

    def publish(self, event: RunEvent) -> None:
        """Hands a run's event to its local readers now and to Redis with the writer's next batch.
        Raises StaleWriter once Redis refused one of the run's ids (another party wrote its end),
        Unavailable past the run's bound of events Redis has not taken."""
        run = self._local.get(event.run_id)
        if run is None:
            run = self._local[event.run_id] = _LocalRun(event.run_id)
            # A run continued here (after a pause, from another worker) has its start in Redis and
            # may have readers following it there: in memory mode too, its events go there.
            run.spilled = event.type is not EventType.RUN_CREATED
        if run.stale:
            raise StaleWriter(event.run_id)
        if run.failure is not None and not event.type.terminal:
            raise run.failure
        if run.unwritten >= self._redis_limit and not event.type.terminal:
            raise errors.Unavailable(
                f"Redis has not taken the last {run.unwritten} events of this run (it is unreachable); "
                "the run is failed rather than hold more",
                reason="EVENTS_UNWRITTEN",
            )
        run.log.append(event)
        run.ended = run.ended or event.type.terminal
        for reader in run.readers:
            reader.put(event)
        self._enqueue(run, event, to_redis=run.spilled or not self._in_memory)

    def _enqueue(self, run: _LocalRun, event: RunEvent, *, to_redis: bool) -> None:
        run.unwritten += 1
        self._pending.append((run, event, to_redis))
        self._has_pending.set()
        if self._writer is None and not self._stopped:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _spill(self, run: _LocalRun) -> None:
        """In memory mode: the run's events so far go to Redis (in order, before any later one)."""
        if self._in_memory and not run.spilled:
            run.spilled = True
            for event in run.log:
                self._enqueue(run, event, to_redis=True)

    async def append(self, event: RunEvent) -> None:
        """An event of a run executing here goes through the hub (a new run's RUN_CREATED makes it
        local); the terminal event, a pause and RUN_CREATED return once Redis has them (the lease
        goes with the first, the run may continue on any instance after the second, JoinRun
        elsewhere needs the third). Others (the sweeper's end of another
        instance's run, a waiting run's end) are written directly."""
        if event.type is not EventType.RUN_CREATED and event.run_id not in self._local:
            await super().append(event)
            return
        if event.type.pauses:
            self._spill(self._local[event.run_id])
        self.publish(event)
        if event.type.terminal or event.type.pauses or event.type is EventType.RUN_CREATED:
            await self.written(event)

    async def written(self, event: RunEvent) -> None:
        """Returns once Redis has `event`; StaleWriter if it refused its id."""
        run = self._local.get(event.run_id)
        while run is not None and run.written_upto < event.event_id:
            if run.stale:
                raise StaleWriter(event.run_id)
            if run.failure is not None:
                raise run.failure
            if self._stopped:
                raise errors.Unavailable("the orchestration instance stopped", reason="STOPPING")
            run.progress.clear()
            await run.progress.wait()

    def release(self, run_id: str) -> None:
        """The run's worker here is gone. Ended: its events stay in memory a moment for late readers.
        Not ended (its lease was lost, the process is dropping it): its readers go on from Redis,
        where whoever ends it writes the end."""
        run = self._local.get(run_id)
        if run is None:
            return
        if not run.ended:
            del self._local[run_id]
            self._spill(run)
            last = run.log[-1].event_id if run.log else 0
            for reader in run.readers:
                if self._closing:
                    reader.fail(errors.Unavailable("the orchestration instance stopped", reason="STOPPING"))
                else:
                    self._watch(run.key, last, reader, runs=True)
            return
        self._linger(run_id, run)

    def _linger(self, run_id: str, run: _LocalRun) -> None:
        self._lingering[run_id] = asyncio.get_running_loop().call_later(
            self._linger_seconds, self._forget, run_id, run
        )

    def _forget(self, run_id: str, run: _LocalRun) -> None:
        self._lingering.pop(run_id, None)
        if self._local.get(run_id) is not run:
            return
        if run.unwritten == 0:
            del self._local[run_id]
        else:
            # Still unwritten (Redis is down): kept until the writer has it.
            self._linger(run_id, run)

    async def _write_loop(self) -> None:
        backoff, down = 0.05, False
        while True:
            if not self._pending:
                if self._stopped:
                    return
                self._has_pending.clear()
                await self._has_pending.wait()
                continue
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), MAX_BATCH))]
            try:
                results = await self._send(batch)
            except RedisError as exc:
                self._pending.extendleft(reversed(batch))
                for run, event, _ in batch:
                    run.attempted_upto = max(run.attempted_upto, event.event_id)
                if not down:
                    log.warning(
                        "Redis did not take the run events; keeping them and retrying",
                        extra={"fields": {"error": str(exc)[:300], "events": len(self._pending)}},
                    )
                down = True
                if self._stopped:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if down:
                log.warning("Redis takes the run events again", extra={"fields": {"events": len(batch)}})
            if self._settle(batch, results):
                log.warning("Redis did not take some run events; retrying them")
                if self._stopped:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff, down = 0.05, False
            self._flushed.set()

    async def _send(self, batch: list[_Pending]) -> list[Any]:
        """One pipeline for the batch; returns each event's XADD reply (or error), True for an event
        kept in memory only."""
        at: list[int | None] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            n = 0
            for run, event, to_redis in batch:
                if not to_redis:
                    at.append(None)
                else:
                    pipe.xadd(run.key, {"e": encode(event)}, id=f"0-{event.event_id}")
                    at.append(n)
                    n += 1
                if event.type.terminal:
                    # Also in memory mode: a run spilled once (it paused) has its first part there.
                    pipe.expire(run.key, self._retention)
                    pipe.delete(LEASE_KEY.format(run_id=event.run_id), CANCEL_KEY.format(run_id=event.run_id))
                    n += 2
            replies = await pipe.execute(raise_on_error=False) if n else []
        return [True if i is None else replies[i] for i in at]

    def _settle(self, batch: list[_Pending], results: list[Any]) -> bool:
        """Records what Redis took; puts back (first in line, in order) what met a connection
        error (a cluster pipeline answers per node); True when something was put back."""
        retry: list[_Pending] = []
        for (run, event, to_redis), result in zip(batch, results, strict=True):
            if isinstance(result, RedisError) and (
                not isinstance(result, ResponseError) or isinstance(result, RETRYABLE)
            ):
                run.attempted_upto = max(run.attempted_upto, event.event_id)
                retry.append((run, event, to_redis))
                continue
            run.unwritten -= 1
            if isinstance(result, ResponseError):
                if "equal or smaller" not in str(result):
                    log.error(
                        "Redis refused a run event",
                        extra={"fields": {"run_id": event.run_id, "error": str(result)[:300]}},
                    )
                    run.failure = errors.Unavailable(f"Redis refused the run's events: {result}")
                elif event.event_id > run.attempted_upto:
                    # Another party (the lease sweeper) wrote this id: the run is not ours any more.
                    run.stale = True
                else:
                    run.written_upto = max(run.written_upto, event.event_id)
            elif isinstance(result, Exception):
                run.failure = errors.Unavailable(f"Redis refused the run's events: {result}")
            else:
                run.written_upto = max(run.written_upto, event.event_id)
            run.progress.set()
        self._pending.extendleft(reversed(retry))
        return bool(retry)

    # Reading ---------------------------------------------------------------------------------------

    async def last_event_id(self, run_id: str) -> int:
        run = self._local.get(run_id)
        if run is not None and run.log:
            return run.log[-1].event_id
        return await super().last_event_id(run_id)

    async def tail(self, run_id: str, after_event_id: int) -> AsyncIterator[RunEvent]:
        """Every event after `after_event_id`, live, until (and including) the run's terminal
        event. Ends RESOURCE_EXHAUSTED when its consumer fell `reader_buffer_events` behind."""
        reader: _Reader[RunEvent] = _Reader(self._reader_limit)
        key = EVENTS_KEY.format(run_id=run_id)
        last = after_event_id
        run = self._local.get(run_id)
        history: list[RunEvent] = []
        if run is not None:
            # Registered before the history is read, so nothing falls between the two.
            run.readers.add(reader)
            first_here = run.log[0].event_id if run.log else last + 1
            if last + 1 < first_here:
                history = await self._range(key, last, first_here - 1)
            history += [e for e in run.log if e.event_id > last]
        else:
            # The history is read here, not pushed through the bounded buffer (a long one would
            # overflow it); the multiplexed reader takes over from its end.
            history = await self._range(key, last, None)
            if not (history and history[-1].type.terminal):
                seen = history[-1].event_id if history else last
                watch = self._watch(key, seen, reader, runs=True)
                if watch.position != f"0-{seen}":
                    # The stream was already followed from elsewhere in it: what lies between.
                    history += await self._range(key, seen, None)
        try:
            for event in history:
                if event.event_id <= last:
                    continue
                last = event.event_id
                yield event
                if event.type.terminal:
                    return
            while True:
                live = await reader.next()
                if live is None:
                    raise errors.ResourceExhausted(
                        f"the stream was cut: its client read too slowly ({self._reader_limit} events "
                        f"waiting); resume with JoinRun after event {last}",
                        retry_after=0.0,
                        reason="SLOW_READER",
                        metadata={"run_id": run_id, "last_event_id": str(last)},
                    )
                if live.event_id <= last:
                    continue
                last = live.event_id
                yield live
                if live.type.terminal:
                    return
        finally:
            self._drop(run_id, key, reader)

    async def _range(self, key: str, after: int, upto: int | None) -> list[RunEvent]:
        out: list[RunEvent] = []
        start, end = f"0-{after + 1}", "+" if upto is None else f"0-{upto}"
        while True:
            entries: list[Any] = await self._redis.xrange(key, start, end, count=READ_COUNT) or []
            for entry_id, fields in entries:
                out.append(decode(entry_id, fields[b"e"]))
            if len(entries) < READ_COUNT:
                return out
            start = f"0-{out[-1].event_id + 1}"

    def _drop(self, run_id: str, key: str, reader: _Reader[Any]) -> None:
        run = self._local.get(run_id)
        if run is not None:
            run.readers.discard(reader)
        watch = self._watches.get(key)
        if watch is not None:
            watch.readers.discard(reader)
            if not watch.readers:
                del self._watches[key]

    async def follow_session(self, session_id: str, position: str) -> AsyncIterator[str]:
        """The run ids announced in the session's stream after `position` (an entry id), live."""
        key = SESSION_RUNS_KEY.format(session_id=session_id)
        reader: _Reader[tuple[tuple[int, int], str]] = _Reader(self._reader_limit)
        last = _stream_id(position)
        watch = self._watch_at(key, position, reader, runs=False)
        history: list[tuple[tuple[int, int], str]] = []
        if _stream_id(watch.position) > last:
            # Another follower of the session is further on: the entries in between, once.
            start = f"{last[0]}-{last[1] + 1}"
            entries: list[Any] = await self._redis.xrange(key, start, watch.position) or []
            for entry_id, fields in entries:
                history.append((_stream_id(_text(entry_id)), _text(fields[b"run"])))
        try:
            for at, run_id in history:
                last = max(last, at)
                yield run_id
            while True:
                item = await reader.next()
                if item is None:
                    raise errors.ResourceExhausted(
                        "the stream was cut: its client read too slowly",
                        retry_after=0.0,
                        reason="SLOW_READER",
                    )
                at, run_id = item
                if at <= last:
                    continue
                last = at
                yield run_id
        finally:
            self._drop("", key, reader)

    def _watch(self, key: str, after: int, reader: _Reader[Any], *, runs: bool) -> _Watch:
        return self._watch_at(key, f"0-{after}", reader, runs=runs)

    def _watch_at(self, key: str, position: str, reader: _Reader[Any], *, runs: bool) -> _Watch:
        if self._closing:
            raise errors.Unavailable("the orchestration instance is stopping", reason="STOPPING")
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(key, position, runs=runs)
            self._wake()
        watch.readers.add(reader)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        return watch

    def _wake(self) -> None:
        """Interrupts the multiplexed read so it includes a new stream (a blocked XREAD would only
        see it on its next call)."""
        self._watches_changed.set()
        if self._reader is not None and not self._cluster and self._reads:
            task = asyncio.get_running_loop().create_task(self._nudge())
            self._lingering_tasks.add(task)
            task.add_done_callback(self._lingering_tasks.discard)

    async def _nudge(self) -> None:
        with contextlib.suppress(RedisError):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": b"1"}, maxlen=1)
                pipe.expire(self._wake_key, 3600)
                await pipe.execute()

    async def _read_loop(self) -> None:
        backoff = 0.05
        while not self._closing:
            if not self._watches:
                self._watches_changed.clear()
                await self._watches_changed.wait()
                continue
            self._watches_changed.clear()
            try:
                replies = await (self._poll() if self._cluster else self._block())
            except RedisError as exc:
                log.warning(
                    "the multiplexed run event read failed", extra={"fields": {"error": str(exc)[:300]}}
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            except errors.Unavailable:
                return
            backoff = 0.05
            for key, entries in replies:
                self._deliver(_text(key), entries)
            if self._cluster and not any(entries for _, entries in replies):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._watches_changed.wait(), CLUSTER_POLL_SECONDS)

    async def _block(self) -> list[tuple[Any, list[Any]]]:
        streams: dict[Any, Any] = {w.key: w.position for w in self._watches.values()}
        streams[self._wake_key] = self._wake_position
        reply = await self._read(streams, READ_COUNT)
        out = []
        for key, entries in reply or ():
            if _text(key) == self._wake_key:
                if entries:
                    self._wake_position = _text(entries[-1][0])
                continue
            out.append((key, entries))
        return out

    async def _poll(self) -> list[tuple[Any, list[Any]]]:
        watches = list(self._watches.values())
        async with self._redis.pipeline(transaction=False) as pipe:
            for w in watches:
                pipe.xread({w.key: w.position}, count=READ_COUNT)
            replies = await pipe.execute()
        out = []
        for reply in replies:
            for key, entries in reply or ():
                out.append((key, entries))
        return out

    def _deliver(self, key: str, entries: list[Any]) -> None:
        watch = self._watches.get(key)
        if watch is None or not entries:
            return
        watch.position = _text(entries[-1][0])
        ended = False
        for entry_id, fields in entries:
            item: Any = (
                decode(entry_id, fields[b"e"])
                if watch.runs
                else (_stream_id(_text(entry_id)), _text(fields[b"run"]))
            )
            for reader in watch.readers:
                reader.put(item)
            ended = ended or (watch.runs and item.type.terminal)
        if ended:
            # Its readers end with the terminal event; a later reader reads the history.
            del self._watches[key]

    # Stopping --------------------------------------------------------------------------------------

    async def close(self) -> None:
        """`stop`, then the pool closes (when it is the hub's own)."""
        await self.stop()
        await super().close()

    async def stop(self) -> None:
        """After the runs' end (RunManager.shutdown): Redis gets what it has not yet (for a moment),
        readers still waiting end UNAVAILABLE, the background tasks end (none is left running)."""
        self._closing = True
        if self._pending and self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), 2.0)
        self._stopped = True
        self._has_pending.set()
        stopping = errors.Unavailable(
            "the orchestration instance stopped; resume with JoinRun on another", reason="STOPPING"
        )
        for run in self._local.values():
            run.progress.set()
            for reader in run.readers:
                reader.fail(stopping)
        for watch in self._watches.values():
            for reader in watch.readers:
                reader.fail(stopping)
        for handle in self._lingering.values():
            handle.cancel()
        if self._reader is not None and self._reads and not self._cluster:
            await self._nudge()
        tasks = [t for t in (self._writer, self._reader, *self._lingering_tasks) if t is not None]
        if tasks:
            _, left = await asyncio.wait(tasks, timeout=self._block_ms / 1000 + 1)
            for task in left:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(RedisError):
            await self._redis.delete(self._wake_key)

    async def _drained(self) -> None:
        while self._pending:
            self._flushed.clear()
            await self._flushed.wait()


def _stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id "ms-seq" as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


__all__ = ["EventHub", "StaleWriter"]
