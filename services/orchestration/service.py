"""The orchestration domain: sessions, runs, busy policies, limits, cancel and resume.

Plain Python over the store, the event streams, the run manager and the peer clients; raises the
platform's errors. The tenant and user always come from the Principal (built from the verified token).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Protocol

from services.orchestration.config import OrchestrationOptions
from services.orchestration.models import (
    AgentSnapshot,
    BusyPolicy,
    CancelMode,
    EventType,
    QuotaState,
    ResponseFormat,
    Run,
    RunError,
    RunEvent,
    RunState,
    RunToolCall,
    Session,
    SessionState,
    StoredMessage,
    ToolCallStatus,
    ToolDecision,
    ToolOutput,
)
from services.orchestration.quota import QuotaChecks
from services.orchestration.waiting import (
    answered_outputs,
    decided_calls,
    end_waiting,
    known_calls,
    not_waiting,
)
from services.platform import errors
from services.platform.auth import Principal
from services.platform.errors import Violation
from services.platform.pagination import PageTokens, keyset, paginate
from services.platform.tiers import TierLimits, limits_for
from services.platform.timestamps import micros
from services.platform.validation import require_id, require_request_id, update_paths

MAX_TITLE = 256


class Store(Protocol):
    """Sessions and runs, scoped by tenant (store.OrchestrationStore)."""

    async def insert_session(self, session: Session, *, request_id: str | None) -> None: ...
    async def session_by_request(self, tenant_id: str, user_id: str, request_id: str) -> Session | None: ...
    async def get_session(self, tenant_id: str, session_id: str) -> Session | None: ...
    async def list_sessions(
        self,
        tenant_id: str,
        *,
        user_id: str | None,
        agent_id: str | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[Session]: ...
    async def end_session(self, tenant_id: str, session_id: str, now_us: int) -> bool: ...
    async def rename_session(self, tenant_id: str, session_id: str, title: str, now_us: int) -> None: ...
    async def delete_session(self, tenant_id: str, session_id: str) -> None: ...
    async def insert_run(self, run: Run, *, request_id: str | None) -> None: ...
    async def get_run(self, tenant_id: str, run_id: str) -> Run | None: ...
    async def run_by_request(self, session_id: str, request_id: str) -> Run | None: ...
    async def live_runs(self, session_id: str) -> list[Run]: ...
    async def list_runs(
        self, tenant_id: str, session_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> list[Run]: ...
    async def step_calls(self, run_id: str, step: int) -> list[RunToolCall]: ...
    async def pending_calls(self, run_id: str) -> list[RunToolCall]: ...
    async def answer_call(
        self, run_id: str, call: RunToolCall, *, from_status: ToolCallStatus, now_us: int
    ) -> bool: ...
    async def resume_run(self, run_id: str, *, from_state: RunState, blocking: ToolCallStatus) -> bool: ...
    async def set_tool_secret(self, tenant_id: str, secret: str, now_us: int) -> None: ...
    async def finish_run(
        self,
        run_id: str,
        *,
        state: RunState,
        now_us: int,
        last_event_id: int,
        error: RunError | None = ...,
        from_states: Iterable[int] = ...,
    ) -> bool: ...
    async def close_pending_calls(self, run_id: str, status: ToolCallStatus, now_us: int) -> None: ...
    async def set_active_run(
        self, session_id: str, run_id: str | None, now_us: int, *, only_if: str | None = None
    ) -> None: ...


class Locks(Protocol):
    """Mutual exclusion per session across instances (store.SessionLocks)."""

    def session(self, session_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...


class Events(Protocol):
    """Run event streams, leases and session announcements (events.RunEvents)."""

    async def append(self, event: RunEvent) -> None: ...
    async def announce(self, session_id: str, run_id: str) -> None: ...
    async def take_lease(self, run_id: str, owner: str, ttl_seconds: float) -> None: ...
    async def last_event_id(self, run_id: str) -> int: ...
    def tail(self, run_id: str, after_event_id: int) -> AsyncIterator[RunEvent]: ...


class Limits(Protocol):
    """The tenant's request rate and concurrent-run slots (limits.RunLimits)."""

    async def check_rate(self, tenant_id: str, limits: TierLimits) -> None: ...
    async def reserve(self, tenant_id: str, run_id: str, limits: TierLimits) -> None: ...
    async def release(self, tenant_id: str, run_id: str) -> None: ...
    async def hold(self, tenant_id: str, run_id: str) -> None: ...


class Runs(Protocol):
    """Run execution on this instance (runs.RunManager)."""

    @property
    def instance_id(self) -> str: ...
    def launch(
        self,
        run: Run,
        session: Session,
        caller: Principal,
        *,
        wait_for: list[str],
        next_event_id: int,
        resuming: bool = False,
    ) -> None: ...
    async def request_cancel(self, run_id: str, mode: CancelMode) -> None: ...


class Agents(Protocol):
    """Agent configs, read with the caller's token (agent_cache.AgentCache)."""

    async def get(self, agent_id: str, *, tenant_id: str, token: str) -> AgentSnapshot: ...


class Conversation(Protocol):
    """The conversation service, as orchestration's sessions use it (clients.ConversationClient)."""

    async def create(
        self, *, agent_id: str, agent_version: int, title: str, request_id: str, token: str
    ) -> str: ...
    async def close(self, conversation_id: str, *, token: str) -> None: ...
    async def rename(self, conversation_id: str, title: str, *, token: str) -> None: ...
    async def delete(self, conversation_id: str, *, token: str) -> None: ...
    async def get_message(self, conversation_id: str, message_id: str, *, token: str) -> StoredMessage: ...
    async def switch(self, conversation_id: str, message_id: str, *, exact: bool, token: str) -> str: ...
    async def check_quota(self, *, token: str) -> QuotaState: ...


class OrchestrationService:
    def __init__(
        self,
        *,
        store: Store,
        events: Events,
        limits: Limits,
        runs: Runs,
        agents: Agents,
        conversation: Conversation,
        locks: Locks,
        page_tokens: PageTokens,
        options: OrchestrationOptions,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._events = events
        self._limits = limits
        self.runs = runs
        self.agents = agents
        self._conversation = conversation
        self._quota = QuotaChecks(conversation)
        self._locks = locks
        self._page_tokens = page_tokens
        self._options = options
        self._clock = clock

    # Sessions ---------------------------------------------------------------------------------------

    async def start_session(
        self, caller: Principal, *, agent_id: str, title: str, request_id: str
    ) -> Session:
        require_id(agent_id, "agent_id")
        if len(title) > MAX_TITLE:
            raise errors.InvalidArgument.field("title", f"must be at most {MAX_TITLE} characters")
        require_request_id(request_id)
        if request_id:
            existing = await self._store.session_by_request(caller.tenant_id, caller.user_id, request_id)
            if existing is not None:
                return existing
        agent = await self.agents.get(agent_id, tenant_id=caller.tenant_id, token=caller.token)
        if not agent.active:
            raise errors.FailedPrecondition(
                f"agent {agent_id} is not active",
                [Violation("agent.state", "the agent must be ACTIVE to start a session", "AGENT_INACTIVE")],
                reason="AGENT_INACTIVE",
            )
        session_id = str(uuid.uuid4())
        conversation_id = await self._conversation.create(
            agent_id=agent_id,
            agent_version=agent.version,
            title=title,
            request_id=f"session:{session_id}",
            token=caller.token,
        )
        now = micros(self._clock)
        session = Session(
            id=session_id,
            tenant_id=caller.tenant_id,
            user_id=caller.user_id,
            agent_id=agent_id,
            agent_version=agent.version,
            conversation_id=conversation_id,
            title=title,
            state=SessionState.ACTIVE,
            active_run_id="",
            create_time_us=now,
            update_time_us=now,
        )
        await self._store.insert_session(session, request_id=request_id)
        return session

    async def _visible_session(self, caller: Principal, session_id: str) -> Session:
        require_id(session_id, "session_id")
        session = await self._store.get_session(caller.tenant_id, session_id)
        # Another tenant's session, or (for a member) another user's, does not exist for this caller.
        if session is None or (session.user_id != caller.user_id and not caller.is_admin):
            raise errors.NotFound(f"session {session_id} not found", reason="SESSION_NOT_FOUND")
        return session

    async def get_session(self, caller: Principal, session_id: str) -> Session:
        return await self._visible_session(caller, session_id)

    async def list_sessions(
        self, caller: Principal, *, page_size_: int, page_token: str, agent_id: str
    ) -> tuple[list[Session], str]:
        async def fetch(after: tuple[int, str] | None, limit: int) -> list[Session]:
            return await self._store.list_sessions(
                caller.tenant_id,
                user_id=None if caller.is_admin else caller.user_id,
                agent_id=agent_id or None,
                after=after,
                limit=limit,
            )

        page = await paginate(
            self._page_tokens,
            ("sessions", caller.tenant_id, caller.user_id, agent_id),
            page_size=page_size_,
            page_token=page_token,
            parse=keyset,
            fetch=fetch,
            cursor_of=lambda s: [s.create_time_us, s.id],
        )
        return page.items, page.next_page_token

    async def end_session(self, caller: Principal, session_id: str) -> Session:
        session = await self._visible_session(caller, session_id)
        if session.state is SessionState.ENDED:
            return session
        await self._store.end_session(caller.tenant_id, session.id, micros(self._clock))
        live = await self._store.live_runs(session.id)
        for run in live:
            await self._stop(run, CancelMode.KEEP)
        for run in live:
            await self._wait_for_end(run.id)
        with contextlib.suppress(errors.NotFound):
            # Its conversation may have been deleted on its own: the session has ended all the same.
            await self._conversation.close(session.conversation_id, token=caller.token)
        return await self._visible_session(caller, session_id)

    async def update_session(
        self, caller: Principal, session_id: str, *, paths: list[str], title: str
    ) -> Session:
        """Renames a session (its conversation too, so conversation lists and search show the name)."""
        require_id(session_id, "session.id")
        session = await self._visible_session(caller, session_id)
        update_paths(paths, ("title",))
        if len(title) > MAX_TITLE:
            raise errors.InvalidArgument.field("session.title", f"must be at most {MAX_TITLE} characters")
        with contextlib.suppress(errors.NotFound):
            # A conversation deleted on its own leaves the session's own title to change.
            await self._conversation.rename(session.conversation_id, title, token=caller.token)
        await self._store.rename_session(caller.tenant_id, session.id, title, micros(self._clock))
        return await self._visible_session(caller, session_id)

    async def delete_session(self, caller: Principal, session_id: str) -> None:
        """Cancels the live runs (discarding partial answers: nothing of the session stays), erases
        the conversation, then the session's rows. A failure before the rows go leaves the session in
        place, so the delete can be retried; usage already recorded stays counted."""
        session = await self._visible_session(caller, session_id)
        live = await self._store.live_runs(session.id)
        for run in live:
            await self._stop(run, CancelMode.DISCARD)
        for run in live:
            await self._wait_for_end(run.id)
        with contextlib.suppress(errors.NotFound):
            await self._conversation.delete(session.conversation_id, token=caller.token)
        await self._store.delete_session(caller.tenant_id, session.id)

    # Runs -------------------------------------------------------------------------------------------

    async def send_message(
        self,
        caller: Principal,
        *,
        session_id: str,
        text: str,
        request_id: str,
        busy_policy: BusyPolicy | None,
        model_override: str = "",
        response_format: ResponseFormat | None = None,
        edit_of: str = "",
        regenerate_from: str = "",
    ) -> Run:
        """Starts (or queues) the run for a message; a repeated request_id returns the first run.
        `response_format` (checked by convert) replaces the agent's for this run. `edit_of` /
        `regenerate_from`: the run of EditMessage / RegenerateAnswer (Run's fields of those names)."""
        self._check_message(text, request_id)
        session = await self._visible_session(caller, session_id)
        if request_id and (existing := await self._store.run_by_request(session.id, request_id)):
            return existing
        agent = await self._messageable_agent(caller, session)
        policy = busy_policy or agent.busy_policy or BusyPolicy.REJECT
        tier = limits_for(caller.tier)
        self._check_override(agent, tier, model_override)
        await self._limits.check_rate(caller.tenant_id, tier)
        await self._check_quota(caller)

        async def admit() -> Run:
            async with self._locks.session(session.id):
                # Checked again under the lock: the same request may have been admitted meanwhile.
                if request_id and (existing := await self._store.run_by_request(session.id, request_id)):
                    return existing
                live = await self._store.live_runs(session.id)
                run = await self._admit(
                    caller,
                    session,
                    agent,
                    text,
                    request_id,
                    policy,
                    tier,
                    live,
                    model_override,
                    response_format,
                )
                if edit_of or regenerate_from:
                    run = dataclasses.replace(run, edit_of=edit_of, regenerate_from=regenerate_from)
                await self._launch(run, session, caller, policy, live)
            return run

        # A caller that goes away mid-admission (a closed stream) must not leave a run stored but
        # never started: QUEUED with no worker, it would hold its session until its lease lapsed and
        # then fail, and a retry of the same request_id would get that run. Admission finishes.
        admitting = asyncio.ensure_future(admit())
        # Its failure is the caller's, or nobody's once the caller is gone (not an unread exception).
        admitting.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(admitting)

    # Branches ---------------------------------------------------------------------------------------

    async def edit_message(
        self,
        caller: Principal,
        *,
        session_id: str,
        message_id: str,
        text: str,
        request_id: str,
        busy_policy: BusyPolicy | None,
    ) -> Run:
        """A run that stores `text` as a new version of a user message when it starts, then answers
        it; admitted as SendMessage admits (busy policy, limits, quota)."""
        require_id(message_id, "message_id")
        self._check_message(text, request_id)
        session = await self._visible_session(caller, session_id)
        message = await self._conversation.get_message(
            session.conversation_id, message_id, token=caller.token
        )
        if message.role != "user":
            raise errors.InvalidArgument.field(
                "message_id",
                f"must name a user message, not an {message.role} message (regenerate an answer)",
            )
        return await self.send_message(
            caller,
            session_id=session.id,
            text=text,
            request_id=request_id,
            busy_policy=busy_policy,
            edit_of=message.id,
        )

    async def regenerate_answer(
        self,
        caller: Principal,
        *,
        session_id: str,
        message_id: str,
        request_id: str,
        busy_policy: BusyPolicy | None,
    ) -> Run:
        """A run that answers again the user message an assistant message answered (through any
        tool steps in between), with that run's model override and response format; its answer
        becomes a sibling of that run's first answer."""
        require_id(message_id, "message_id")
        require_request_id(request_id)
        session = await self._visible_session(caller, session_id)
        message = await self._conversation.get_message(
            session.conversation_id, message_id, token=caller.token
        )
        if message.role != "assistant":
            raise errors.InvalidArgument.field(
                "message_id",
                f"must name an assistant message, not a {message.role} message (edit it instead)",
            )
        # Up past tool results, tool calls and a structured answer's repair prompt to the person's message.
        asked = message
        while asked.role != "user" or asked.metadata.get("repair") == "true":
            if not asked.parent_id:
                raise errors.FailedPrecondition(
                    f"message {message_id} answers no user message",
                    [Violation("message_id", "no user message precedes it", "NO_USER_MESSAGE")],
                    reason="NO_USER_MESSAGE",
                )
            asked = await self._conversation.get_message(
                session.conversation_id, asked.parent_id, token=caller.token
            )
        # The answer is asked again as it was asked: the first run's model and response format.
        run_id = message.metadata.get("run_id", "")
        first = await self._store.get_run(caller.tenant_id, run_id) if run_id else None
        return await self.send_message(
            caller,
            session_id=session.id,
            text=asked.content,
            request_id=request_id,
            busy_policy=busy_policy,
            model_override=first.model_override if first else "",
            response_format=first.response_format if first else None,
            regenerate_from=asked.id,
        )

    async def switch_branch(
        self, caller: Principal, *, session_id: str, message_id: str
    ) -> tuple[Session, str]:
        """Makes the branch through a message active (down to its newest leaf); the new leaf's id.
        Refused while a run is live: its answer belongs to the branch it started on."""
        require_id(message_id, "message_id")
        session = await self._visible_session(caller, session_id)
        async with self._locks.session(session.id):
            live = await self._store.live_runs(session.id)
            if live:
                raise errors.FailedPrecondition(
                    "the session has a run in progress; switch branches once it has ended",
                    [Violation("session.active_run_id", f"run {live[-1].id} is in progress", "SESSION_BUSY")],
                    reason="SESSION_BUSY",
                )
            leaf = await self._conversation.switch(
                session.conversation_id, message_id, exact=False, token=caller.token
            )
        return session, leaf

    @staticmethod
    def _check_override(agent: AgentSnapshot, tier: TierLimits, model: str) -> None:
        """A message's model: only where the agent allows overrides, and only a model of the tier."""
        if not model:
            return
        if not agent.allow_model_override:
            raise errors.FailedPrecondition(
                f"agent {agent.id} does not allow a message to choose its model",
                [
                    Violation(
                        "model_override",
                        "the agent's allow_model_override is not set",
                        "OVERRIDE_NOT_ALLOWED",
                    )
                ],
                reason="MODEL_OVERRIDE_NOT_ALLOWED",
            )
        if not tier.allows_model(model):
            raise errors.FailedPrecondition(
                f"model {model!r} is not available on the {tier.name} tier",
                [Violation("model_override", f"not allowed on the {tier.name} tier", "MODEL_NOT_ALLOWED")],
                reason="MODEL_NOT_ALLOWED",
            )

    async def _check_quota(self, caller: Principal) -> None:
        """RESOURCE_EXHAUSTED (conversation's QuotaFailure and reset time) once the month's quota is
        used up. Usage is recorded when a run's answer is stored, so runs admitted before that
        finish: the overrun is at most what the runs already admitted use.

        Asked on every admission, not cached: a cached "under quota" would admit a whole cache
        window of runs past the edge, and the check is one indexed read in conversation (its cost at
        50 concurrent runs: bench/metering.py). Concurrent admissions of a tenant share a call that
        started after they all arrived (quota.QuotaChecks), which keeps that bound."""
        await self._quota.check(caller)

    def _check_message(self, text: str, request_id: str) -> None:
        if not text.strip():
            raise errors.InvalidArgument.field("text", "must not be empty")
        if len(text.encode()) > self._options.max_message_bytes:
            raise errors.InvalidArgument.field(
                "text", f"must be at most {self._options.max_message_bytes} bytes"
            )
        require_request_id(request_id)

    async def _messageable_agent(self, caller: Principal, session: Session) -> AgentSnapshot:
        """The session's agent, when the session is active and its agent too."""
        if session.state is not SessionState.ACTIVE:
            raise errors.FailedPrecondition(
                f"session {session.id} has ended",
                [Violation("session.state", "messages need an ACTIVE session", "SESSION_ENDED")],
                reason="SESSION_ENDED",
            )
        agent = await self.agents.get(session.agent_id, tenant_id=caller.tenant_id, token=caller.token)
        if not agent.active:
            raise errors.FailedPrecondition(
                f"agent {session.agent_id} is not active",
                [Violation("agent.state", "the agent must be ACTIVE", "AGENT_INACTIVE")],
                reason="AGENT_INACTIVE",
            )
        return agent

    async def _admit(
        self,
        caller: Principal,
        session: Session,
        agent: AgentSnapshot,
        text: str,
        request_id: str,
        policy: BusyPolicy,
        tier: TierLimits,
        live: list[Run],
        model_override: str = "",
        response_format: ResponseFormat | None = None,
    ) -> Run:
        """Under the session lock: the busy-policy decision, the tenant's concurrency slot, the
        run's lease and its row. Nothing is left reserved when it refuses."""
        if live and policy is BusyPolicy.REJECT:
            raise errors.FailedPrecondition(
                "the session already has a run in progress",
                [Violation("session.active_run_id", f"run {live[-1].id} is in progress", "SESSION_BUSY")],
                reason="SESSION_BUSY",
            )
        run = Run(
            id=str(uuid.uuid4()),
            tenant_id=caller.tenant_id,
            session_id=session.id,
            user_id=caller.user_id,
            state=RunState.QUEUED,
            agent_version=agent.version,
            input_text=text,
            last_event_id=1,
            create_time_us=micros(self._clock),
            model_override=model_override,
            response_format=response_format,
        )
        await self._limits.reserve(caller.tenant_id, run.id, tier)
        try:
            await self._events.take_lease(run.id, self.runs.instance_id, self._options.lease_ttl_seconds)
            await self._store.insert_run(run, request_id=request_id)
        except BaseException:
            await self._limits.release(caller.tenant_id, run.id)
            raise
        return run

    async def _launch(
        self, run: Run, session: Session, caller: Principal, policy: BusyPolicy, live: list[Run]
    ) -> None:
        """Announces the admitted run, cancels the runs it replaces, and starts its worker."""
        await self._events.append(
            RunEvent(
                event_id=1,
                run_id=run.id,
                session_id=session.id,
                type=EventType.RUN_CREATED,
                agent_version=run.agent_version,
                event_time_us=run.create_time_us,
            )
        )
        await self._events.announce(session.id, run.id)
        if live and policy in (BusyPolicy.INTERRUPT, BusyPolicy.ROLLBACK):
            mode = CancelMode.KEEP if policy is BusyPolicy.INTERRUPT else CancelMode.DISCARD
            for previous in live:
                await self._stop(previous, mode)
        self.runs.launch(run, session, caller, wait_for=[r.id for r in live], next_event_id=2)

    async def _visible_run(self, caller: Principal, run_id: str) -> Run:
        require_id(run_id, "run_id")
        run = await self._store.get_run(caller.tenant_id, run_id)
        if run is None or (run.user_id != caller.user_id and not caller.is_admin):
            raise errors.NotFound(f"run {run_id} not found", reason="RUN_NOT_FOUND")
        return run

    async def _live_view(self, run: Run) -> Run:
        if run.state.terminal:
            return run
        pending = tuple(await self._store.pending_calls(run.id)) if run.state.waiting else ()
        return dataclasses.replace(
            run, last_event_id=await self._events.last_event_id(run.id), pending_tool_calls=pending
        )

    async def get_run(self, caller: Principal, run_id: str) -> Run:
        return await self._live_view(await self._visible_run(caller, run_id))

    async def list_runs(
        self, caller: Principal, *, session_id: str, page_size_: int, page_token: str
    ) -> tuple[list[Run], str]:
        session = await self._visible_session(caller, session_id)

        async def fetch(after: tuple[int, str] | None, limit: int) -> list[Run]:
            return await self._store.list_runs(caller.tenant_id, session.id, after=after, limit=limit)

        page = await paginate(
            self._page_tokens,
            ("runs", session.id),
            page_size=page_size_,
            page_token=page_token,
            parse=keyset,
            fetch=fetch,
            cursor_of=lambda r: [r.create_time_us, r.id],
        )
        return [await self._live_view(r) for r in page.items], page.next_page_token

    async def cancel_run(self, caller: Principal, run_id: str) -> Run:
        run = await self._visible_run(caller, run_id)
        if run.state.terminal:
            raise errors.FailedPrecondition(
                f"run {run_id} has already ended ({run.state.name})",
                [Violation("run.state", "only a QUEUED or RUNNING run can be cancelled", "RUN_ENDED")],
                reason="RUN_ENDED",
            )
        await self._stop(run, CancelMode.KEEP)
        await self._wait_for_end(run.id)
        return await self.get_run(caller, run_id)

    async def _stop(self, run: Run, mode: CancelMode) -> None:
        """Cancels a run: a waiting one here and now (no worker holds it), else through its worker."""
        if run.state.waiting and await end_waiting(
            self._store,
            self._events,
            run,
            state=RunState.CANCELLED,
            error=RunError("CANCELLED", "the run was cancelled"),
            call_status=ToolCallStatus.CANCELLED,
            now_us=micros(self._clock),
        ):
            return
        await self.runs.request_cancel(run.id, mode)

    # Tool calls of waiting runs ---------------------------------------------------------------------

    async def submit_tool_outputs(self, caller: Principal, run_id: str, outputs: Sequence[ToolOutput]) -> Run:
        """Records a client's results; the step's last one continues the run on this instance."""
        run = await self._visible_run(caller, run_id)
        calls = await self._store.step_calls(run.id, run.steps)
        ids = [o.tool_call_id for o in outputs]
        if run.state is not RunState.REQUIRES_ACTION:
            # A repeat after the run went on: the answered step is the one before the current.
            calls += await self._store.step_calls(run.id, run.steps - 1)
        if run.state is not RunState.REQUIRES_ACTION and not _all_answered(calls, ids):
            raise not_waiting(run, RunState.REQUIRES_ACTION)
        by_id = known_calls(run, calls, ids, "outputs")
        now = micros(self._clock)
        for call in answered_outputs(by_id, outputs, self._options.tool_max_output_bytes):
            await self._store.answer_call(
                run.id, call, from_status=ToolCallStatus.AWAITING_OUTPUT, now_us=now
            )
        await self._continue(caller, run, RunState.REQUIRES_ACTION, ToolCallStatus.AWAITING_OUTPUT)
        return await self.get_run(caller, run_id)

    async def decide_tool_calls(
        self, caller: Principal, run_id: str, decisions: Sequence[ToolDecision]
    ) -> Run:
        """Records a person's decisions. Who may decide is who may see the run (the session's user,
        or an owner or admin of the tenant): to anyone else the run does not exist (NOT_FOUND), as
        every other run RPC answers, so a decision leaks nothing about another user's runs."""
        require_id(run_id, "run_id")
        run = await self._visible_run(caller, run_id)
        calls = await self._store.step_calls(run.id, run.steps)
        ids = [d.tool_call_id for d in decisions]
        if run.state is not RunState.REQUIRES_APPROVAL:
            # A repeat after the run went on: the answered step is the one before the current.
            calls += await self._store.step_calls(run.id, run.steps - 1)
        if run.state is not RunState.REQUIRES_APPROVAL and not _all_answered(calls, ids):
            raise not_waiting(run, RunState.REQUIRES_APPROVAL)
        by_id = known_calls(run, calls, ids, "decisions")
        session = await self._store.get_session(caller.tenant_id, run.session_id)
        if session is None:
            raise errors.NotFound(f"run {run_id} not found", reason="RUN_NOT_FOUND")
        agent = await self.agents.get(session.agent_id, tenant_id=caller.tenant_id, token=caller.token)
        now = micros(self._clock)
        for call in decided_calls(agent, by_id, decisions):
            await self._store.answer_call(
                run.id, call, from_status=ToolCallStatus.AWAITING_APPROVAL, now_us=now
            )
        await self._continue(caller, run, RunState.REQUIRES_APPROVAL, ToolCallStatus.AWAITING_APPROVAL)
        return await self.get_run(caller, run_id)

    async def _continue(self, caller: Principal, run: Run, state: RunState, blocking: ToolCallStatus) -> None:
        """When nothing of the step is left `blocking`, this instance takes the run back: lease,
        concurrency slot, and a worker that continues the step (same run id, next event ids)."""
        if not await self._store.resume_run(run.id, from_state=state, blocking=blocking):
            return
        session = await self._store.get_session(caller.tenant_id, run.session_id)
        if session is None:
            return
        await self._events.take_lease(run.id, self.runs.instance_id, self._options.lease_ttl_seconds)
        await self._limits.hold(caller.tenant_id, run.id)
        next_event_id = await self._events.last_event_id(run.id) + 1
        self.runs.launch(run, session, caller, wait_for=[], next_event_id=next_event_id, resuming=True)

    async def rotate_tool_signing_secret(self, caller: Principal) -> str:
        """A new signing secret for the tenant's http tool calls, returned only here."""
        if not caller.is_admin:
            raise errors.PermissionDenied(
                "only an owner or admin rotates the tool signing secret", reason="NOT_ADMIN"
            )
        secret = secrets.token_hex(32)
        await self._store.set_tool_secret(caller.tenant_id, secret, micros(self._clock))
        return secret

    async def active_run_id(self, caller: Principal, session_id: str) -> str:
        session = await self._visible_session(caller, session_id)
        live = await self._store.live_runs(session.id)
        if not live:
            raise errors.FailedPrecondition("the session has no run in progress", reason="NO_ACTIVE_RUN")
        return live[0].id

    async def _wait_for_end(self, run_id: str) -> None:
        last = await self._events.last_event_id(run_id)

        async def consume() -> None:
            async for _ in self._events.tail(run_id, max(0, last - 1)):
                pass

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consume(), self._options.cancel_wait_seconds)

    def events(self, run_id: str, after_event_id: int = 0) -> AsyncIterator[RunEvent]:
        """The run's events after `after_event_id`, live until its end (for a run just created)."""
        return self._events.tail(run_id, after_event_id)

    async def join_run(self, caller: Principal, run_id: str, after_event_id: int) -> AsyncIterator[RunEvent]:
        """Checks the request, then returns the stream of the run's events after `after_event_id`."""
        if after_event_id < 0:
            raise errors.InvalidArgument.field("after_event_id", "must not be negative")
        run = await self._visible_run(caller, run_id)
        last = await self._events.last_event_id(run.id)
        # No stream of a live run: Redis lost it (a restart without persistence, a flush) and the
        # run's instance has not written since. Its next event recreates it, read on below.
        if last == 0 and run.state not in (RunState.QUEUED, RunState.RUNNING):
            raise errors.FailedPrecondition(
                f"the events of run {run_id} are no longer retained",
                [
                    Violation(
                        "run.events",
                        "a finished run's events are kept for a retention period",
                        "EVENTS_EXPIRED",
                    )
                ],
                reason="EVENTS_EXPIRED",
            )
        if after_event_id <= last:
            return self._events.tail(run.id, after_event_id)
        # Past what Redis holds: the run's instance showed its readers events it has not stored yet
        # (they are on their way), or it died before storing them. Read on from the stored tail:
        # what the caller has is skipped, and the run's end comes whatever its id (after a crash,
        # the id its sweeper gave it: the tail that was never stored is lost).
        return _past(self._events.tail(run.id, max(0, last - 1)), after_event_id)


async def _past(events: AsyncIterator[RunEvent], after_event_id: int) -> AsyncIterator[RunEvent]:
    async for event in events:
        if event.event_id > after_event_id or event.type.terminal:
            yield event


def _all_answered(calls: Sequence[RunToolCall], ids: Sequence[str]) -> bool:
    """Every named call already has its answer: a repeat after the run went on is idempotent."""
    by_id = {c.id: c for c in calls}
    return bool(ids) and all(i in by_id and by_id[i].answered for i in ids)
