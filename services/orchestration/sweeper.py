"""The lease sweeper: on every instance, fails the live runs whose instance died, so no run stays
live forever.

A lease missing from Redis alone does not prove that: Redis may have lost its keys (a restart
without persistence, a flush, a failover), and the owner re-asserts the lease on its next renewal.
So a run is failed only when its lease has been missing for longer than a grace period (more than
the renew interval) AND its owner's heartbeat in PostgreSQL (runs.heartbeat_us) is stale too."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from services.orchestration.events import RunEvents, StaleWriter
from services.orchestration.limits import RunLimits
from services.orchestration.models import EventType, Run, RunError, RunEvent, RunState, ToolCallStatus
from services.orchestration.store import OrchestrationStore
from services.orchestration.waiting import end_waiting
from services.platform.cancellation import raise_if_cancelled
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
        grace_seconds: float,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._events = events
        self._limits = limits
        self._interval = interval_seconds
        self._is_local = is_local
        self._clock = clock
        self._grace = grace_seconds
        # When this sweeper first saw each run's lease missing (since then missing at every sweep).
        self._missing_since: dict[str, float] = {}

    async def sweep(self) -> int:
        """Fails every live run whose lease and heartbeat lapsed; returns how many it failed."""
        live = [r for r in await self._store.all_live_runs() if not self._is_local(r.id)]
        holders = await self._events.lease_holders([r.id for r in live])
        now = self._clock()
        missing = {
            run.id: self._missing_since.get(run.id, now)
            for run, h in zip(live, holders, strict=True)
            if h is None
        }
        self._missing_since = missing
        overdue = [run for run in live if run.id in missing and now - missing[run.id] >= self._grace]
        failed = 0
        if overdue:
            beats = await self._store.heartbeats([r.id for r in overdue])
            fresh_after = round((now - self._grace) * 1_000_000)
            for run in overdue:
                beat = beats.get(run.id)
                if (beat is None or beat < fresh_after) and await self._fail_orphan(run):
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
        stopped = "the instance running this run stopped (its lease expired)"
        in_flight = await self._store.running_calls(run.id)
        message = stopped
        if in_flight:
            named = ", ".join(f"{c.name} ({c.id})" for c in in_flight)
            message += f" while tool calls were in flight: {named}"
        error = RunError("UNAVAILABLE", message)
        last = await self._events.last_event_id(run.id)
        # Each call in flight gets its TOOL_CALL_COMPLETED (an error result), then the run its end.
        closed = [
            dataclasses.replace(
                c,
                status=ToolCallStatus.COMPLETED,
                output=f"{stopped} before this call's result arrived",
                is_error=True,
            )
            for c in in_flight
        ]
        if not await self._store.finish_run(
            run.id,
            state=RunState.FAILED,
            now_us=micros(self._clock),
            last_event_id=last + 1 + len(closed),
            error=error,
        ):
            return False
        if closed:
            # Closed by the sweeper that ended the run: no call is left without a result.
            await self._store.close_running_calls(run.id, closed[0].output, micros(self._clock))
        await self._store.set_active_run(run.session_id, None, micros(self._clock), only_if=run.id)
        await self._limits.release(run.tenant_id, run.id)
        ends = [(EventType.TOOL_CALL_COMPLETED, (call,)) for call in closed]
        next_id = last + 1
        for type_, calls in [*ends, (EventType.RUN_FAILED, ())]:
            for _attempt in range(5):
                event = RunEvent(
                    event_id=next_id,
                    run_id=run.id,
                    session_id=run.session_id,
                    type=type_,
                    error=error if type_ is EventType.RUN_FAILED else None,
                    tool_calls=calls,
                    agent_version=run.agent_version,
                    event_time_us=micros(self._clock),
                )
                next_id += 1
                try:
                    await self._events.append(event)
                    break
                except StaleWriter:
                    continue  # the dead worker's last write took that id: the next one
        log.warning("run failed: lease expired", extra={"fields": {"run_id": run.id}})
        return True

    async def run(self) -> None:
        """The background job: a sweep at start-up, then every sweep interval."""
        while True:
            raise_if_cancelled()
            try:
                # Bounded: a query on a connection that died silently must not stop sweeping forever.
                await asyncio.wait_for(self.sweep(), timeout=max(10.0, 2 * self._interval))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease sweep failed")
            await asyncio.sleep(self._interval)
