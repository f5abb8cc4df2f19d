"""Run execution: each run is a background task owned by the instance that accepted it (not by the
client's stream, so it survives a disconnect), holding a Redis lease its keeper renews. The sweeper
on every instance fails runs whose lease lapsed, so no run stays live forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable

from services.orchestration.agent_cache import AgentCache
from services.orchestration.clients import ConversationClient
from services.orchestration.config import OrchestrationOptions
from services.orchestration.events import RunEvents, StaleWriter
from services.orchestration.limits import RunLimits
from services.orchestration.models import (
    CancelMode,
    EventType,
    Run,
    RunError,
    RunEvent,
    RunState,
    Session,
    Usage,
)
from services.orchestration.providers import ModelConfig, ProviderError, Providers
from services.orchestration.store import OrchestrationStore
from services.platform import errors
from services.platform.auth import Principal
from services.platform.call_context import current_call
from services.platform.tiers import limits_for

log = logging.getLogger("agentmesh.orchestration.runs")


class _Lost(Exception):
    """This instance no longer owns the run (its lease lapsed and the sweeper ended it)."""


@dataclasses.dataclass
class _Handle:
    run: Run
    session: Session
    caller: Principal
    wait_for: list[str]
    next_event_id: int
    task: asyncio.Task[None] | None = None
    cancel_mode: CancelMode | None = None
    # Set once the answer is complete: a cancel arriving later is too late.
    finishing: bool = False
    abandoned: bool = False
    stopping: bool = False
    agent_version: int = 0
    text: list[str] = dataclasses.field(default_factory=list)


class RunManager:
    def __init__(
        self,
        *,
        store: OrchestrationStore,
        events: RunEvents,
        limits: RunLimits,
        agents: AgentCache,
        conversation: ConversationClient,
        providers: Providers,
        options: OrchestrationOptions,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._events = events
        self._limits = limits
        self._agents = agents
        self._conversation = conversation
        self._providers = providers
        self._options = options
        self._clock = clock
        self.instance_id = uuid.uuid4().hex
        self._handles: dict[str, _Handle] = {}
        self._abandoned: list[asyncio.Task[None]] = []

    # Starting and cancelling ------------------------------------------------------------------------

    def launch(
        self, run: Run, session: Session, caller: Principal, *, wait_for: list[str], next_event_id: int
    ) -> None:
        """Starts the run's worker in the background, outside the current call's context."""
        handle = _Handle(run, session, caller, wait_for, next_event_id)
        context = contextvars.copy_context()
        context.run(current_call.set, None)
        handle.task = asyncio.get_running_loop().create_task(self._work(handle), context=context)
        self._handles[run.id] = handle

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

    # The worker -------------------------------------------------------------------------------------

    async def _emit(self, h: _Handle, type_: EventType, **fields: object) -> None:
        event = RunEvent(
            event_id=h.next_event_id,
            run_id=h.run.id,
            session_id=h.run.session_id,
            type=type_,
            agent_version=h.agent_version,
            event_time=self._clock(),
            **fields,  # type: ignore[arg-type]
        )
        # A cancel must not cut a write in half: event ids and the stored partial answer have to
        # match exactly what the stream holds, so the write completes before the cancel proceeds.
        write = asyncio.ensure_future(self._events.append(event))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await write
                self._written(h, event)
            raise
        except StaleWriter:
            raise _Lost() from None
        self._written(h, event)

    @staticmethod
    def _written(h: _Handle, event: RunEvent) -> None:
        h.next_event_id = event.event_id + 1
        if event.text_delta:
            h.text.append(event.text_delta)

    async def _work(self, h: _Handle) -> None:
        keeper = asyncio.get_running_loop().create_task(self._keep(h))
        try:
            await self._execute(h)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if h.abandoned or task is None:
                raise
            task.uncancel()
            if h.stopping:
                await self._end(
                    h, RunState.FAILED, RunError("UNAVAILABLE", "the orchestration instance stopped")
                )
            elif h.cancel_mode is not None:
                await self._end(h, RunState.CANCELLED, RunError("CANCELLED", "the run was cancelled"))
            else:
                raise
        except _Lost:
            log.warning("run lost its lease", extra={"fields": {"run_id": h.run.id}})
        except ProviderError as exc:
            await self._end(h, RunState.FAILED, RunError(exc.code, exc.message))
        except errors.AgentmeshError as exc:
            await self._end(h, RunState.FAILED, RunError(exc.code.name, exc.message))
        except Exception as exc:
            log.exception("run failed", extra={"fields": {"run_id": h.run.id}})
            await self._end(h, RunState.FAILED, RunError("INTERNAL", f"internal error: {type(exc).__name__}"))
        finally:
            keeper.cancel()
            if self._handles.get(h.run.id) is h:
                del self._handles[h.run.id]

    async def _execute(self, h: _Handle) -> None:
        for previous in h.wait_for:
            await self._wait_until_ended(h.caller.tenant_id, previous)
        caller, session = h.caller, h.session
        agent = await self._agents.get(session.agent_id, tenant_id=caller.tenant_id, token=caller.token)
        h.agent_version = agent.version
        if not await self._store.start_run(h.run.id, agent_version=agent.version, now=self._clock()):
            raise _Lost()
        await self._store.set_active_run(session.id, h.run.id, self._clock())
        await self._emit(h, EventType.RUN_STARTED)
        run_tag = {"run_id": h.run.id}
        user_message_id = await self._conversation.append(
            session.conversation_id,
            role="user",
            content=h.run.input_text,
            metadata=run_tag,
            request_id=f"run:{h.run.id}:user",
            token=caller.token,
        )
        await self._store.update_run(h.run.id, user_message_id=user_message_id)
        budget = agent.max_context_tokens or limits_for(caller.tier).max_context_tokens
        messages = await self._conversation.context(
            session.conversation_id,
            token_budget=budget,
            system_prompt=agent.system_prompt,
            token=caller.token,
        )
        provider, model = self._providers.resolve(agent.model)
        config = ModelConfig(
            model=model, temperature=agent.temperature, max_output_tokens=agent.max_output_tokens
        )
        usage: Usage | None = None
        async for delta in provider.stream(config, messages):
            if delta.usage is not None:
                usage = delta.usage
            if delta.text:
                await self._emit(h, EventType.MESSAGE_DELTA, text_delta=delta.text)
        h.finishing = True
        answer = "".join(h.text)
        usage = usage or Usage(0, len(h.text))
        assistant_id = await self._conversation.append(
            session.conversation_id,
            role="assistant",
            content=answer,
            metadata={**run_tag, "agent_version": str(agent.version)},
            request_id=f"run:{h.run.id}:assistant",
            token=caller.token,
        )
        await self._emit(h, EventType.MESSAGE_COMPLETED, final_message=answer, usage=usage)
        if not await self._store.finish_run(
            h.run.id,
            state=RunState.COMPLETED,
            now=self._clock(),
            last_event_id=h.next_event_id,
            usage=usage,
            assistant_message_id=assistant_id,
        ):
            raise _Lost()
        # The session is free before the terminal event, so whoever sees the event finds it free.
        await self._after(h)
        await self._emit(h, EventType.RUN_COMPLETED, usage=usage)

    async def _end(self, h: _Handle, state: RunState, error: RunError) -> None:
        """Ends a run that did not complete: stores its partial answer (unless discarded) and says why."""
        partial = "".join(h.text)
        keep = partial and h.cancel_mode is not CancelMode.DISCARD and not h.finishing
        assistant_id = ""
        if keep:
            try:
                assistant_id = await self._conversation.append(
                    h.session.conversation_id,
                    role="assistant",
                    content=partial,
                    metadata={"run_id": h.run.id, "agent_version": str(h.agent_version), "partial": "true"},
                    request_id=f"run:{h.run.id}:assistant",
                    token=h.caller.token,
                )
            except errors.AgentmeshError as exc:
                log.warning(
                    "partial answer not stored", extra={"fields": {"run_id": h.run.id, "error": exc.message}}
                )
        ended = await self._store.finish_run(
            h.run.id,
            state=state,
            now=self._clock(),
            last_event_id=h.next_event_id,
            error=error,
            assistant_message_id=assistant_id,
        )
        if ended:
            await self._after(h)
            try:
                await self._emit(
                    h,
                    EventType.RUN_CANCELLED if state is RunState.CANCELLED else EventType.RUN_FAILED,
                    error=error,
                    final_message=partial if keep else "",
                )
            except _Lost:
                pass

    async def _after(self, h: _Handle) -> None:
        await self._store.set_active_run(h.session.id, None, self._clock(), only_if=h.run.id)
        await self._limits.release(h.caller.tenant_id, h.run.id)

    async def _wait_until_ended(self, tenant_id: str, run_id: str) -> None:
        run = await self._store.get_run(tenant_id, run_id)
        if run is None or run.state.terminal:
            return
        async for _event in self._events.tail(run_id, 0):
            pass

    async def _keep(self, h: _Handle) -> None:
        """Renews the lease and the concurrency slot; picks up cancels requested on other instances."""
        ttl, owner = self._options.lease_ttl_seconds, self.instance_id
        last_renew = time.monotonic()
        while True:
            await asyncio.sleep(self._options.cancel_poll_seconds)
            if time.monotonic() - last_renew >= self._options.lease_renew_seconds:
                held, mode = await self._events.renew_lease(h.run.id, owner, ttl)
                await self._limits.refresh(h.caller.tenant_id, h.run.id)
                last_renew = time.monotonic()
                if not held:
                    h.abandoned = True
                    if h.task is not None:
                        h.task.cancel()
                    return
            else:
                mode = await self._events.cancel_requested(h.run.id)
            if mode is not None:
                self._cancel_local(h.run.id, mode)

    # Lease sweeping ---------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Fails every live run whose lease lapsed; returns how many it failed."""
        live = [r for r in await self._store.all_live_runs() if r.id not in self._handles]
        holders = await self._events.lease_holders([r.id for r in live])
        failed = 0
        for run, holder in zip(live, holders, strict=True):
            if holder is None and await self._fail_orphan(run):
                failed += 1
        return failed

    async def _fail_orphan(self, run: Run) -> bool:
        error = RunError("UNAVAILABLE", "the instance running this run stopped (its lease expired)")
        last = await self._events.last_event_id(run.id)
        if not await self._store.finish_run(
            run.id, state=RunState.FAILED, now=self._clock(), last_event_id=last + 1, error=error
        ):
            return False
        await self._store.set_active_run(run.session_id, None, self._clock(), only_if=run.id)
        await self._limits.release(run.tenant_id, run.id)
        for attempt in range(5):
            event = RunEvent(
                event_id=last + 1 + attempt,
                run_id=run.id,
                session_id=run.session_id,
                type=EventType.RUN_FAILED,
                error=error,
                agent_version=run.agent_version,
                event_time=self._clock(),
            )
            try:
                await self._events.append(event)
                break
            except StaleWriter:
                continue
        log.warning("run failed: lease expired", extra={"fields": {"run_id": run.id}})
        return True

    async def run_sweeper(self) -> None:
        """The background job: a sweep at start-up, then every sweep interval."""
        while True:
            try:
                # Bounded: a query on a connection that died silently must not stop sweeping forever.
                await asyncio.wait_for(
                    self.sweep(), timeout=max(10.0, 2 * self._options.sweep_interval_seconds)
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease sweep failed")
            await asyncio.sleep(self._options.sweep_interval_seconds)

    # Stopping ---------------------------------------------------------------------------------------

    async def shutdown(self, grace: float = 5.0) -> None:
        """Graceful stop: local runs end now as FAILED (UNAVAILABLE), rather than after their lease."""
        tasks = []
        for handle in list(self._handles.values()):
            if handle.task is not None and not handle.finishing:
                handle.stopping = True
                handle.task.cancel()
                tasks.append(handle.task)
        tasks += self._abandoned
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        await self._providers.close()

    def abandon(self) -> None:
        """Drops every local run without a word, as a crashed process would (for tests)."""
        for handle in list(self._handles.values()):
            handle.abandoned = True
            if handle.task is not None:
                handle.task.cancel()
                self._abandoned.append(handle.task)
        self._handles.clear()
