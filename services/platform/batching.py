"""Write coalescing: the writes that arrive while one is on the wire go out together, as one round trip.

    batcher = Batcher(write_many, key=lambda item: item.conversation_id)
    result = await batcher.submit(item)

There is no timer: a lone caller is sent in the next turn of the event loop, so latency at low load
is a single write's. Under load each batch holds what queued up during the previous one's round trip, which is what makes 32
concurrent writers cost a few statements instead of 32 (bench/conversation.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Calls `run(items)` with the items submitted meanwhile, at most `in_flight` batches at a time.

    `run` returns one outcome per item, in order: a result, or an exception for that item alone; an
    exception raised by `run` itself is every item's. Items with the same `key` never share a batch
    (a later one waits for the next), for writes whose order within a statement is not defined.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        key: Callable[[T], Hashable] | None = None,
        max_batch: int = 64,
        in_flight: int = 1,
    ):
        self._run = run
        self._key = key
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if len(self._running) < self._in_flight:
            self._start()
        # Shielded: a caller that goes away (a cancelled RPC) must not cancel a write that others share.
        return await asyncio.shield(future)

    def _start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._send())
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        rest: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[object] = set()
        for entry in self._queue:
            key = self._key(entry[0]) if self._key is not None else None
            if len(batch) >= self._max_batch or (key is not None and key in keys):
                rest.append(entry)
            else:
                keys.add(key)
                batch.append(entry)
        self._queue = rest
        return batch

    async def _send(self) -> None:
        # Taken when the task first runs, not when it was made: the callers of the same loop
        # iteration (a gather, a burst on several connections) share the batch.
        batch = self._take()
        if not batch:
            return
        try:
            outcomes: Sequence[R | BaseException] = await self._run([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} got {len(outcomes)} outcomes")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller gets the batch's failure
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._queue and len(self._running) < self._in_flight:
            self._start()

    async def close(self) -> None:
        """Waits for the batches on the wire (the queue drains with them)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
