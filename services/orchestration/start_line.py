"""The start line: a run's way to its first delta comes before other runs' work that can wait.

What a user waits for is the first delta; once it streams, the end of the answer arriving a little
later costs them nothing. A burst of hundreds of messages on one process is CPU-bound (one event
loop), so every millisecond spent storing finished answers is one the runs still in line wait.

- At most `concurrency` runs are in their start at once (begin, user message, context); the others
  wait in line, first come first. A burst otherwise starts all of them in lockstep: every run's peer
  calls and statements wait behind everyone's, and past the peer deadline (10 s) runs fail.
- A run is *ahead* from the moment it enters the line until its first delta (or its first model
  step's end, or its end). While any run is ahead, runs past their first delta hold back what can
  wait: storing a finished answer and its terminal events wait (at most `max_defer` seconds, so a
  steady stream of new runs cannot starve them), and their deltas go out in wider windows
  (`busy_window_factor` times the usual), fewer events for the same text.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

# Runs of a process in their start at once.
START_CONCURRENCY = 32
# How long a finished answer's storage waits for the runs ahead, at most.
MAX_DEFER_SECONDS = 1.0
# The delta window while runs are ahead, as a multiple of the configured window.
BUSY_WINDOW_FACTOR = 4


class StartLine:
    def __init__(
        self,
        concurrency: int = START_CONCURRENCY,
        *,
        max_defer: float = MAX_DEFER_SECONDS,
        busy_window_factor: float = BUSY_WINDOW_FACTOR,
    ):
        self._slots = asyncio.Semaphore(concurrency)
        self._max_defer = max_defer
        self.busy_window_factor = busy_window_factor
        self._ahead: set[str] = set()
        self._clear = asyncio.Event()
        self._clear.set()

    @property
    def busy(self) -> bool:
        """Some run is in line or in its start, on its way to its first delta."""
        return bool(self._ahead)

    def enter(self, run_id: str) -> None:
        self._ahead.add(run_id)
        self._clear.clear()

    def leave(self, run_id: str) -> None:
        """The run streamed its first delta, or will not (a step without text, its end); idempotent."""
        self._ahead.discard(run_id)
        if not self._ahead:
            self._clear.set()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            yield

    async def yield_to_starts(self) -> None:
        """Waits until no run is ahead, or `max_defer` seconds."""
        if self._ahead:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._clear.wait(), self._max_defer)
