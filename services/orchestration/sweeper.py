"""The lease sweeper: on every instance, fails the live runs whose lease lapsed (their instance
died), so no run stays live forever."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from services.orchestration.events import RunEvents, StaleWriter
from services.orchestration.limits import RunLimits
from services.orchestration.models import EventType, Run, RunError, RunEvent, RunState, ToolCallStatus
from services.orchestration.store import OrchestrationStore
from services.orchestration.waiting import end_waiting
from services.platform.timestamps import micros

log = logging.getLogger("agentmesh.orchestration.runs")


class LeaseSweeper:
    def __init__(
        self,
        *,
        store: OrchestrationStore,
        events: RunEvents,
        limits: RunLimits,
        interval_seconds: float,
        is_local: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._events = events
        self._limits = limits
        self._interval = interval_seconds
        self._is_local = is_local
        self._clock = clock

    async def sweep(self) -> int:
        """Fails every live run whose lease lapsed; returns how many it failed."""
        live = [r for r in await self._store.all_live_runs() if not self._is_local(r.id)]
        holders = await self._events.lease_holders([r.id for r in live])
        failed = 0
        for run, holder in zip(live, holders, strict=True):
            if holder is None and await self._fail_orphan(run):
                failed += 1
        return failed + await self._expire_waits()

    async def _expire_waits(self) -> int:
        """Fails the waiting runs whose wait ended: DEADLINE_EXCEEDED, their pending calls EXPIRED."""
        now = micros(self._clock)
        expired = 0
        for run in await self._store.expired_waiting_runs(now):
            error = RunError("DEADLINE_EXCEEDED", "nobody answered the run's tool calls in time")
            if await end_waiting(
                self._store,
                self._events,
                run,
                state=RunState.FAILED,
                error=error,
                call_status=ToolCallStatus.EXPIRED,
                now_us=now,
            ):
                expired += 1
        return expired

    async def _fail_orphan(self, run: Run) -> bool:
        error = RunError("UNAVAILABLE", "the instance running this run stopped (its lease expired)")
        last = await self._events.last_event_id(run.id)
        if not await self._store.finish_run(
            run.id, state=RunState.FAILED, now_us=micros(self._clock), last_event_id=last + 1, error=error
        ):
            return False
        await self._store.set_active_run(run.session_id, None, micros(self._clock), only_if=run.id)
        await self._limits.release(run.tenant_id, run.id)
        for attempt in range(5):
            event = RunEvent(
                event_id=last + 1 + attempt,
                run_id=run.id,
                session_id=run.session_id,
                type=EventType.RUN_FAILED,
                error=error,
                agent_version=run.agent_version,
                event_time_us=micros(self._clock),
            )
            try:
                await self._events.append(event)
                break
            except StaleWriter:
                continue
        log.warning("run failed: lease expired", extra={"fields": {"run_id": run.id}})
        return True

    async def run(self) -> None:
        """The background job: a sweep at start-up, then every sweep interval."""
        while True:
            try:
                # Bounded: a query on a connection that died silently must not stop sweeping forever.
                await asyncio.wait_for(self.sweep(), timeout=max(10.0, 2 * self._interval))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease sweep failed")
            await asyncio.sleep(self._interval)
