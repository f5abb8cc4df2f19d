"""The lease keeper: renews the leases of this instance's runs, and hands them cancels requested on
other instances (the cancel flag rides along with each renewal, and one read of every local run's
flag per poll interval finds it sooner)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection

from services.orchestration.events import RunEvents
from services.orchestration.limits import RunLimits
from services.orchestration.models import CancelMode
from services.orchestration.worker import RunHandle
from services.platform.cancellation import raise_if_cancelled
from services.platform.error_mapping import DEPENDENCY_ERRORS, unavailable

log = logging.getLogger("agentmesh.orchestration.runs")


class LeaseKeeper:
    def __init__(
        self,
        *,
        events: RunEvents,
        limits: RunLimits,
        owner: str,
        ttl_seconds: float,
        renew_seconds: float,
        poll_seconds: float,
        on_cancel: Callable[[str, CancelMode], None],
    ):
        self._events = events
        self._limits = limits
        self._owner = owner
        self._ttl = ttl_seconds
        self._renew = renew_seconds
        self._poll = poll_seconds
        self._on_cancel = on_cancel

    async def keep(self, h: RunHandle) -> None:
        """Until cancelled: renews the run's lease and concurrency slot; a lost lease abandons the run."""
        # The first renewal at a random point of the interval: runs started in one burst would
        # otherwise renew all at once, each holding a Redis connection of the shared pool.
        last_renew = time.monotonic() - random.uniform(0, self._renew / 2)
        while True:
            # Wakes when the renewal is due; after a failed one (Redis down), every poll interval.
            await asyncio.sleep(max(self._poll, self._renew - (time.monotonic() - last_renew)))
            raise_if_cancelled()
            try:
                held, mode = await self._events.renew_lease(h.run.id, self._owner, self._ttl)
                await self._limits.refresh(h.caller.tenant_id, h.run.id)
                last_renew = time.monotonic()
                if not held:
                    h.abandoned = True
                    if h.task is not None:
                        h.task.cancel()
                    return
            except DEPENDENCY_ERRORS as exc:
                # Redis unreachable past the client's retries: the keeper must outlive the outage
                # (it re-asserts the lease the restart dropped on its next renewal; the run's
                # PostgreSQL heartbeat keeps the sweepers off it meanwhile).
                log.warning(
                    "run lease not renewed; retrying",
                    extra={"fields": {"run_id": h.run.id, "error": unavailable(exc).message}},
                )
                continue
            if mode is not None:
                self._on_cancel(h.run.id, mode)

    async def watch_cancels(self, run_ids: Callable[[], Collection[str]]) -> None:
        """While this instance has runs: every poll interval, one read of all their cancel flags
        (requested on another instance), instead of a Redis round trip per run (at hundreds of
        paced runs those reads were a large share of the process's CPU)."""
        while run_ids():
            await asyncio.sleep(self._poll)
            raise_if_cancelled()
            ids = list(run_ids())
            try:
                modes = await self._events.cancels_requested(ids)
            except DEPENDENCY_ERRORS as exc:
                log.warning(
                    "run cancel flags not read; retrying",
                    extra={"fields": {"runs": len(ids), "error": unavailable(exc).message}},
                )
                continue
            for run_id, mode in zip(ids, modes, strict=True):
                if mode is not None:
                    self._on_cancel(run_id, mode)
