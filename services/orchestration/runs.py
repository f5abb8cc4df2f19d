"""The run manager: wires the run worker, the lease keeper and the lease sweeper.

Each run is a background task owned by the instance that accepted it (not by the client's stream,
so it survives a disconnect): the worker executes it (worker.py) while the keeper renews its Redis
lease (lease.py) and the manager beats every local run's heartbeat in PostgreSQL; the sweeper on
every instance fails runs whose lease lapsed and whose heartbeat went stale (sweeper.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Callable

from services.orchestration.agent_cache import AgentCache
from services.orchestration.clients import ConversationClient
from services.orchestration.config import OrchestrationOptions
from services.orchestration.hub import EventHub
from services.orchestration.lease import LeaseKeeper
from services.orchestration.limits import RunLimits
from services.orchestration.models import CancelMode, Run, Session
from services.orchestration.providers import Providers
from services.orchestration.store import OrchestrationStore
from services.orchestration.sweeper import LeaseSweeper
from services.orchestration.tools.http import HttpToolExecutor
from services.orchestration.worker import RunHandle, RunWorker
from services.platform.auth import Principal
from services.platform.call_context import current_call
from services.platform.cancellation import raise_if_cancelled
from services.platform.outbound import OutboundClient
from services.platform.timestamps import micros

log = logging.getLogger("agentmesh.orchestration.runs")


class RunManager:
    def __init__(
        self,
        *,
        store: OrchestrationStore,
        events: EventHub,
        limits: RunLimits,
        agents: AgentCache,
        conversation: ConversationClient,
        providers: Providers,
        options: OrchestrationOptions,
        clock: Callable[[], float] = time.time,
    ):
        self._events = events
        self._store = store
        self._clock = clock
        self._beat_seconds = options.lease_renew_seconds
        self._beating: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self._providers = providers
        self.instance_id = uuid.uuid4().hex
        self._handles: dict[str, RunHandle] = {}
        self._abandoned: list[asyncio.Task[None]] = []
        self._outbound = OutboundClient(
            allowed_hosts=options.tool_allowed_hosts, max_response_bytes=options.tool_max_output_bytes
        )
        self.worker = RunWorker(
            store=store,
            events=events,
            limits=limits,
            agents=agents,
            conversation=conversation,
            providers=providers,
            # One outbound client for every http tool call of this instance (its pool, its checks).
            tool_executor=HttpToolExecutor(self._outbound, clock=clock),
            tool_wait_seconds=options.tool_wait_seconds,
            delta_flush_seconds=options.delta_flush_ms / 1000,
            clock=clock,
        )
        self.keeper = LeaseKeeper(
            events=events,
            limits=limits,
            owner=self.instance_id,
            ttl_seconds=options.lease_ttl_seconds,
            renew_seconds=options.lease_renew_seconds,
            poll_seconds=options.cancel_poll_seconds,
            on_cancel=self._cancel_local,
        )
        self.sweeper = LeaseSweeper(
            store=store,
            events=events,
            limits=limits,
            interval_seconds=options.sweep_interval_seconds,
            is_local=self.is_local,
            # Longer than the renew interval, so an owner re-asserts a lost lease before it counts.
            grace_seconds=options.lease_ttl_seconds,
            clock=clock,
        )

    def launch(
        self,
        run: Run,
        session: Session,
        caller: Principal,
        *,
        wait_for: list[str],
        next_event_id: int,
        resuming: bool = False,
    ) -> None:
        """Starts the run's worker in the background, outside the current call's context; `resuming`:
        a run whose wait just ended continues its step."""
        handle = RunHandle(run, session, caller, wait_for, next_event_id, resuming=resuming)
        context = contextvars.copy_context()
        context.run(current_call.set, None)
        handle.task = asyncio.get_running_loop().create_task(self._run(handle), context=context)
        self._handles[run.id] = handle
        if self._beating is None or self._beating.done():
            self._beating = asyncio.get_running_loop().create_task(self._beat(), context=context)
        if self._watching is None or self._watching.done():
            self._watching = asyncio.get_running_loop().create_task(
                self.keeper.watch_cancels(lambda: self._handles), context=context
            )

    async def _beat(self) -> None:
        """The heartbeat of this instance's runs, for as long as it has any: one UPDATE of
        runs.heartbeat_us for all of them per renew interval. Per run rather than one row per
        instance (cheaper to write): an instance that is alive but dropped a run (its lease went to
        another owner, a crash of that task) must not keep vouching for it, and the sweeper then
        needs no owner column or join."""
        while self._handles:
            raise_if_cancelled()
            try:
                await self._store.beat(list(self._handles), micros(self._clock))
            except Exception as exc:
                # A missed beat is harmless while the lease holds; the next tick tries again.
                log.warning("run heartbeat failed", extra={"fields": {"error": str(exc)[:300]}})
            await asyncio.sleep(self._beat_seconds)

    async def _run(self, h: RunHandle) -> None:
        keeper = asyncio.get_running_loop().create_task(self.keeper.keep(h))
        try:
            await self.worker.work(h)
        finally:
            keeper.cancel()
            # Its readers here: from memory a moment longer if it ended, else from Redis.
            self._events.release(h.run.id)
            if self._handles.get(h.run.id) is h:
                del self._handles[h.run.id]

    def is_local(self, run_id: str) -> bool:
        return run_id in self._handles

    async def request_cancel(self, run_id: str, mode: CancelMode) -> None:
        """Cancels the run wherever it runs: directly here, through the cancel flag elsewhere."""
        await self._events.request_cancel(run_id, mode)
        self._cancel_local(run_id, mode)

    def _cancel_local(self, run_id: str, mode: CancelMode) -> None:
        handle = self._handles.get(run_id)
        if handle is None or handle.finishing or handle.cancel_mode is not None or handle.task is None:
            return
        handle.cancel_mode = mode
        handle.task.cancel()

    async def shutdown(self, grace: float = 5.0) -> None:
        """Graceful stop: local runs end now as FAILED (UNAVAILABLE), rather than after their lease;
        a run already finishing (its answer complete) finishes. Returns once every run task and the
        heartbeat ended (or after `grace`): the Redis pool closes next, and a task still writing
        then would reconnect the closed client (a cluster client re-initializes and leaks the
        sockets of its nodes)."""
        tasks = []
        for handle in list(self._handles.values()):
            if handle.task is None:
                continue
            if not handle.finishing:
                handle.stopping = True
                handle.task.cancel()
            tasks.append(handle.task)
        tasks += self._abandoned
        for background in (self._beating, self._watching):
            if background is not None:
                background.cancel()
                tasks.append(background)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        await self._providers.close()
        await self._outbound.aclose()

    def abandon(self) -> None:
        """Drops every local run without a word, as a crashed process would (for tests)."""
        for handle in list(self._handles.values()):
            handle.abandoned = True
            if handle.task is not None:
                handle.task.cancel()
                self._abandoned.append(handle.task)
        self._handles.clear()
