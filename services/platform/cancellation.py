"""Cancellation that an await swallowed.

Python 3.11's `asyncio.wait_for` returns the inner result instead of raising when the cancellation
of its task arrives just as the inner await completes (CPython gh-86296, fixed in 3.12, where
wait_for is built on asyncio.timeout). redis-py 8.1 sends every command through `wait_for` (its
socket timeout), so a task cancelled during a Redis command goes on as if nothing had happened
about half the time (a loop of MGETs cancelled at random: 150 of 300 went on). A background loop
that goes on runs forever: `Server.stop` waits for its background jobs and the event loop's close
waits for every task, so a stop hangs. Each such loop calls `raise_if_cancelled()` once per turn.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raises CancelledError when the current task was asked to stop, even if the await that
    received the request swallowed it (the request stays counted in `Task.cancelling()`)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
