"""Fakes of the protocols services.orchestration.service declares: Store, Locks, Events, Limits,
Runs, Agents, Conversation. In memory, with the same refusals as the real ones where the service
relies on them (limits: RESOURCE_EXHAUSTED; agents: NOT_FOUND for another tenant's agent)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable

from services.orchestration import service
from services.orchestration.models import (
    AgentSnapshot,
    CancelMode,
    EventType,
    QuotaState,
    Run,
    RunError,
    RunEvent,
    RunState,
    RunToolCall,
    Session,
    SessionState,
    ToolCallStatus,
)
from services.orchestration.store import LIVE_STATES, RUN_STATE_CODES
from services.platform import errors
from services.platform.auth import Principal
from services.platform.tiers import TierLimits


class FakeStore:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.runs: dict[str, Run] = {}
        self.session_requests: dict[tuple[str, str, str], str] = {}
        self.run_requests: dict[tuple[str, str], str] = {}
        # run id -> its tool calls, every step, in the order the model made them
        self.calls: dict[str, list[RunToolCall]] = collections.defaultdict(list)
        self.tool_secrets: dict[str, str] = {}

    async def insert_session(self, session: Session, *, request_id: str | None) -> None:
        self.sessions[session.id] = session
        if request_id:
            self.session_requests[(session.tenant_id, session.user_id, request_id)] = session.id

    async def session_by_request(self, tenant_id: str, user_id: str, request_id: str) -> Session | None:
        found = self.session_requests.get((tenant_id, user_id, request_id))
        return self.sessions[found] if found else None

    async def get_session(self, tenant_id: str, session_id: str) -> Session | None:
        s = self.sessions.get(session_id)
        return s if s is not None and s.tenant_id == tenant_id else None

    async def list_sessions(
        self,
        tenant_id: str,
        *,
        user_id: str | None,
        agent_id: str | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[Session]:
        found = [
            s
            for s in self.sessions.values()
            if s.tenant_id == tenant_id
            and (user_id is None or s.user_id == user_id)
            and (not agent_id or s.agent_id == agent_id)
            and (after is None or (s.create_time_us, s.id) < after)
        ]
        return sorted(found, key=lambda s: (s.create_time_us, s.id), reverse=True)[:limit]

    async def end_session(self, tenant_id: str, session_id: str, now_us: int) -> bool:
        s = await self.get_session(tenant_id, session_id)
        if s is None or s.state is not SessionState.ACTIVE:
            return False
        self.sessions[session_id] = dataclasses.replace(
            s, state=SessionState.ENDED, end_time_us=now_us, update_time_us=now_us
        )
        return True

    async def insert_run(self, run: Run, *, request_id: str | None) -> None:
        self.runs[run.id] = run
        if request_id:
            self.run_requests[(run.session_id, request_id)] = run.id

    async def get_run(self, tenant_id: str, run_id: str) -> Run | None:
        r = self.runs.get(run_id)
        return r if r is not None and r.tenant_id == tenant_id else None

    async def run_by_request(self, session_id: str, request_id: str) -> Run | None:
        found = self.run_requests.get((session_id, request_id))
        return self.runs[found] if found else None

    async def live_runs(self, session_id: str) -> list[Run]:
        live = [r for r in self.runs.values() if r.session_id == session_id and not r.state.terminal]
        return sorted(live, key=lambda r: (r.create_time_us, r.id))

    async def list_runs(
        self, tenant_id: str, session_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> list[Run]:
        found = [
            r
            for r in self.runs.values()
            if r.tenant_id == tenant_id
            and r.session_id == session_id
            and (after is None or (r.create_time_us, r.id) < after)
        ]
        return sorted(found, key=lambda r: (r.create_time_us, r.id), reverse=True)[:limit]

    async def step_calls(self, run_id: str, step: int) -> list[RunToolCall]:
        return [c for c in self.calls[run_id] if c.step == step]

    async def pending_calls(self, run_id: str) -> list[RunToolCall]:
        return [c for c in self.calls[run_id] if c.status in _PENDING]

    async def answer_call(
        self, run_id: str, call: RunToolCall, *, from_status: ToolCallStatus, now_us: int
    ) -> bool:
        calls = self.calls[run_id]
        for i, stored in enumerate(calls):
            if stored.id == call.id and stored.status is from_status:
                calls[i] = call
                return True
        return False

    async def resume_run(self, run_id: str, *, from_state: RunState, blocking: ToolCallStatus) -> bool:
        run = self.runs.get(run_id)
        if run is None or run.state is not from_state:
            return False
        if any(c.status is blocking for c in self.calls[run_id]):
            return False
        self.runs[run_id] = dataclasses.replace(run, state=RunState.RUNNING, wait_expire_time_us=0)
        return True

    async def set_tool_secret(self, tenant_id: str, secret: str, now_us: int) -> None:
        self.tool_secrets[tenant_id] = secret

    async def finish_run(
        self,
        run_id: str,
        *,
        state: RunState,
        now_us: int,
        last_event_id: int,
        error: RunError | None = None,
        from_states: Iterable[int] = LIVE_STATES,
    ) -> bool:
        run = self.runs.get(run_id)
        if run is None or RUN_STATE_CODES[run.state] not in set(from_states):
            return False
        self.runs[run_id] = dataclasses.replace(
            run,
            state=state,
            end_time_us=now_us,
            last_event_id=last_event_id,
            error=error,
            wait_expire_time_us=0,
        )
        return True

    async def close_pending_calls(self, run_id: str, status: ToolCallStatus, now_us: int) -> None:
        self.calls[run_id] = [
            dataclasses.replace(c, status=status) if c.status in _PENDING else c for c in self.calls[run_id]
        ]

    async def set_active_run(
        self, session_id: str, run_id: str | None, now_us: int, *, only_if: str | None = None
    ) -> None:
        s = self.sessions.get(session_id)
        if s is None or (only_if is not None and s.active_run_id != only_if):
            return
        self.sessions[session_id] = dataclasses.replace(s, active_run_id=run_id or "", update_time_us=now_us)

    def wait(self, run_id: str, state: RunState, calls: list[RunToolCall], *, expire_us: int = 0) -> None:
        """Puts a run into a wait with its step's calls, as the worker does (store.wait_run)."""
        step = max((c.step for c in calls), default=0)
        run = self.runs[run_id]
        self.runs[run_id] = dataclasses.replace(run, state=state, steps=step, wait_expire_time_us=expire_us)
        self.calls[run_id] = [c for c in self.calls[run_id] if c.step != step] + list(calls)


_PENDING = (ToolCallStatus.AWAITING_APPROVAL, ToolCallStatus.AWAITING_OUTPUT)


class FakeLocks:
    """One asyncio.Lock per session (one process: the same exclusion the Redis lock gives)."""

    def __init__(self) -> None:
        self._locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    @contextlib.asynccontextmanager
    async def session(self, session_id: str) -> AsyncIterator[None]:
        async with self._locks[session_id]:
            yield


class FakeEvents:
    def __init__(self) -> None:
        self.streams: dict[str, list[RunEvent]] = collections.defaultdict(list)
        self.leases: dict[str, str] = {}
        self.announced: list[tuple[str, str]] = []
        self._changed = asyncio.Condition()

    async def append(self, event: RunEvent) -> None:
        async with self._changed:
            self.streams[event.run_id].append(event)
            if event.type.terminal:
                self.leases.pop(event.run_id, None)
            self._changed.notify_all()

    async def announce(self, session_id: str, run_id: str) -> None:
        self.announced.append((session_id, run_id))

    async def take_lease(self, run_id: str, owner: str, ttl_seconds: float) -> None:
        self.leases[run_id] = owner

    async def last_event_id(self, run_id: str) -> int:
        stream = self.streams.get(run_id)
        return stream[-1].event_id if stream else 0

    async def tail(self, run_id: str, after_event_id: int) -> AsyncIterator[RunEvent]:
        while True:
            for event in [e for e in self.streams[run_id] if e.event_id > after_event_id]:
                after_event_id = event.event_id
                yield event
                if event.type.terminal:
                    return
            async with self._changed:
                await self._changed.wait()


class FakeLimits:
    """Counts messages per tenant (no window: a test is well within a minute) and live-run slots."""

    def __init__(self) -> None:
        self.messages: collections.Counter[str] = collections.Counter()
        self.slots: dict[str, set[str]] = collections.defaultdict(set)

    async def check_rate(self, tenant_id: str, limits: TierLimits) -> None:
        self.messages[tenant_id] += 1
        if self.messages[tenant_id] > limits.requests_per_minute:
            raise errors.ResourceExhausted("too many messages", retry_after=60.0)

    async def reserve(self, tenant_id: str, run_id: str, limits: TierLimits) -> None:
        if len(self.slots[tenant_id]) >= limits.concurrent_runs:
            raise errors.ResourceExhausted("too many concurrent runs", retry_after=1.0)
        self.slots[tenant_id].add(run_id)

    async def release(self, tenant_id: str, run_id: str) -> None:
        self.slots[tenant_id].discard(run_id)

    async def hold(self, tenant_id: str, run_id: str) -> None:
        # A resumed run takes its slot back whatever the count: it was admitted once already.
        self.slots[tenant_id].add(run_id)


class FakeRuns:
    """Records launches and cancels; a cancel ends the run (state and terminal event) at once."""

    def __init__(self, store: FakeStore, events: FakeEvents) -> None:
        self.instance_id = "fake-instance"
        self.launched: list[tuple[Run, list[str]]] = []
        self.resumed: list[tuple[str, int]] = []  # (run id, next event id) of each worker that resumes
        self.cancels: list[tuple[str, CancelMode]] = []
        self._store, self._events = store, events

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
        if resuming:
            self.resumed.append((run.id, next_event_id))
        else:
            self.launched.append((run, wait_for))

    async def request_cancel(self, run_id: str, mode: CancelMode) -> None:
        self.cancels.append((run_id, mode))
        run = self._store.runs[run_id]
        self._store.runs[run_id] = dataclasses.replace(run, state=RunState.CANCELLED)
        last = await self._events.last_event_id(run_id)
        await self._events.append(
            RunEvent(
                event_id=last + 1, run_id=run_id, session_id=run.session_id, type=EventType.RUN_CANCELLED
            )
        )


class FakeAgents:
    def __init__(self) -> None:
        self.agents: dict[str, AgentSnapshot] = {}

    def add(self, agent: AgentSnapshot) -> AgentSnapshot:
        self.agents[agent.id] = agent
        return agent

    async def get(self, agent_id: str, *, tenant_id: str, token: str) -> AgentSnapshot:
        agent = self.agents.get(agent_id)
        if agent is None or agent.tenant_id != tenant_id:
            raise errors.NotFound(f"agent {agent_id} not found", reason="AGENT_NOT_FOUND")
        return agent


class FakeConversation:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.closed: list[str] = []

    async def create(
        self, *, agent_id: str, agent_version: int, title: str, request_id: str, token: str
    ) -> str:
        self.created.append(request_id)
        return f"conversation-{len(self.created)}"

    async def close(self, conversation_id: str, *, token: str) -> None:
        self.closed.append(conversation_id)

    async def check_quota(self, *, token: str) -> QuotaState:
        return QuotaState()


def _conforms() -> None:
    """Never called: mypy checks here that each fake still matches the protocol service.py declares."""
    store, events = FakeStore(), FakeEvents()
    _store: service.Store = store
    _locks: service.Locks = FakeLocks()
    _events: service.Events = events
    _limits: service.Limits = FakeLimits()
    _runs: service.Runs = FakeRuns(store, events)
    _agents: service.Agents = FakeAgents()
    _conversation: service.Conversation = FakeConversation()
