"""The run worker: executes one run, from its start to its terminal event.

A run is: prepare (wait for the runs before it, start, store the user message, read the context),
one model step (`model_step`: call the provider, stream its deltas, store the answer), complete.
The worker never decides *whether* a run runs (the service admits it) nor keeps its lease (the
lease keeper does): it only turns an admitted run into events and stored messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from services.conversation.tokens import ApproximateTokenCounter
from services.orchestration.agent_cache import AgentCache
from services.orchestration.clients import ConversationClient
from services.orchestration.events import StaleWriter
from services.orchestration.hub import EventHub
from services.orchestration.limits import RunLimits
from services.orchestration.models import (
    AgentSnapshot,
    CancelMode,
    EventType,
    ModelFallback,
    ResponseFormat,
    Run,
    RunError,
    RunEvent,
    RunState,
    RunToolCall,
    Session,
    ToolCallStatus,
    Usage,
)
from services.orchestration.providers import ChatMessage, ModelConfig, ProviderError, Providers, ToolCall
from services.orchestration.start_line import StartLine
from services.orchestration.store import OrchestrationStore
from services.orchestration.structured import check_answer, repair_prompt
from services.orchestration.tools.http import HttpToolExecutor
from services.orchestration.tools.runner import plan, result_text, run_http, tool_specs, waiting_state
from services.platform import errors
from services.platform.auth import Principal
from services.platform.error_mapping import DEPENDENCY_ERRORS, unavailable
from services.platform.tiers import limits_for
from services.platform.timestamps import micros

log = logging.getLogger("agentmesh.orchestration.runs")

# Provider errors another model may not have (rate limit, outage, timeout): the next model is tried.
FALLBACK_CODES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
_TOKENS = ApproximateTokenCounter()


def metered(
    reported: Usage | None, messages: list[ChatMessage], answer: str, *, model: str, duration_ms: int
) -> Usage:
    """The record of one answer: the provider's counts when it reported them, else the project's
    tokenizer's (conversation's counter, the one its context window budgets with)."""
    if reported is not None:
        prompt, completion, source = reported.prompt_tokens, reported.completion_tokens, "PROVIDER"
    else:
        prompt = sum(_TOKENS.count(m.content) for m in messages)
        completion, source = _TOKENS.count(answer), "ESTIMATED"
    return Usage(prompt, completion, model=model, source=source, duration_ms=duration_ms)


def summed(total: Usage, step: Usage, *, tool_calls: int = 0) -> Usage:
    """`total` plus one model step (its tokens, model time and model) and the calls executed;
    ESTIMATED as soon as any step's counts were estimated."""
    source = step.source or total.source
    if "ESTIMATED" in (total.source, step.source):
        source = "ESTIMATED"
    return Usage(
        total.prompt_tokens + step.prompt_tokens,
        total.completion_tokens + step.completion_tokens,
        model=step.model or total.model,
        source=source,
        tool_calls=total.tool_calls + tool_calls,
        duration_ms=total.duration_ms + step.duration_ms,
    )


class Lost(Exception):
    """This instance no longer owns the run (its lease lapsed and the sweeper ended it)."""


@dataclasses.dataclass
class RunHandle:
    """One run executing on this instance: what the worker, the lease keeper and the manager share."""

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
    # Models that failed before their first token, in the order tried.
    fallbacks: list[ModelFallback] = dataclasses.field(default_factory=list)
    # The model step in progress (1, 2, ...); a resumed run continues its waiting step's calls.
    step: int = 0
    resuming: bool = False
    # The run's usage so far: every model step's, and the tool calls executed (a resumed run
    # starts from the sum its row kept while it waited).
    usage: Usage = dataclasses.field(default_factory=Usage)
    # Delta coalescing: text not yet sent, when the last delta event went (loop time), the timer
    # that sends the text at the window's end, and what that timer's publish raised.
    pending: list[str] = dataclasses.field(default_factory=list)
    last_delta_at: float = float("-inf")
    flush_timer: asyncio.TimerHandle | None = None
    delta_error: Exception | None = None


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one model step produced: the stored answer and what it cost."""

    answer: str
    usage: Usage
    assistant_message_id: str
    # The calls the model made (the answer then is not the run's last).
    tool_calls: tuple[ToolCall, ...] = ()
    # A JSON_SCHEMA answer: parsed when it matches, else why not ("<path>: <why>").
    structured: Any = None
    mismatch: str = ""


class RunWorker:
    def __init__(
        self,
        *,
        store: OrchestrationStore,
        events: EventHub,
        limits: RunLimits,
        agents: AgentCache,
        conversation: ConversationClient,
        providers: Providers,
        tool_executor: HttpToolExecutor,
        tool_wait_seconds: float,
        delta_flush_seconds: float = 0.03,
        start_line: StartLine | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._delta_window = delta_flush_seconds
        self.line = start_line or StartLine()
        self._tool_executor = tool_executor
        self._tool_wait_seconds = tool_wait_seconds
        self._store = store
        self._events = events
        self._limits = limits
        self._agents = agents
        self._conversation = conversation
        self._providers = providers
        self._clock = clock

    async def work(self, h: RunHandle) -> None:
        """Executes the run; however it ends, the run's end is stored and announced."""
        try:
            await self._work(h)
        finally:
            self.line.leave(h.run.id)

    async def _work(self, h: RunHandle) -> None:
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
        except Lost:
            log.warning("run lost its lease", extra={"fields": {"run_id": h.run.id}})
        except ProviderError as exc:
            await self._end(h, RunState.FAILED, RunError(exc.code, exc.message))
        except errors.AgentmeshError as exc:
            await self._end(h, RunState.FAILED, RunError(exc.code.name, exc.message))
        except DEPENDENCY_ERRORS as exc:
            # Redis or the database stayed unreachable past the client's retries: an outage, which
            # the run's record says as UNAVAILABLE in words, not a bug (INTERNAL).
            log.warning("run failed: dependency unreachable", extra={"fields": {"run_id": h.run.id}})
            await self._end(h, RunState.FAILED, RunError("UNAVAILABLE", unavailable(exc).message))
        except Exception as exc:
            log.exception("run failed", extra={"fields": {"run_id": h.run.id}})
            await self._end(h, RunState.FAILED, RunError("INTERNAL", f"internal error: {type(exc).__name__}"))

    async def _execute(self, h: RunHandle) -> None:
        """The agent loop: model, tool calls, results, model, until an answer, a limit or a wait."""
        recorded = 0  # the step the run's row already counts
        if h.resuming:
            agent = await self._agent(h)
            if not await self._continue_step(h, agent, await self._store.step_calls(h.run.id, h.step)):
                return
            messages = await self._context(h, agent)
        else:
            agent, messages = await self._prepare(h)
            h.run = dataclasses.replace(h.run, start_time_us=micros(self._clock))
            recorded = 1
        repaired = False
        while True:
            self._check_limits(h)
            h.step += 1
            if h.step > recorded:
                await self._store.set_steps(h.run.id, h.step)
            h.text.clear()
            step = await self.model_step(h, agent, messages)
            if step.mismatch:
                if repaired:
                    # The answer is stored already: the failure leaves it as it is.
                    h.finishing = True
                    raise errors.FailedPrecondition(
                        f"answer does not match the response schema: {step.mismatch}",
                        reason="RESPONSE_SCHEMA_MISMATCH",
                    )
                repaired = True
                messages = await self._ask_again(h, agent, step.mismatch)
                continue
            if not step.tool_calls:
                await self._complete(h, step)
                return
            limit = limits_for(h.caller.tier).max_tool_calls_per_step
            if len(step.tool_calls) > limit:
                raise errors.ResourceExhausted(
                    f"the model made {len(step.tool_calls)} tool calls in one step; the tier allows {limit}",
                    retry_after=0.0,
                    reason="RUN_LIMIT",
                )
            calls = plan(agent, step.tool_calls, h.step)
            if any(c.status is ToolCallStatus.RUNNING for c in calls):
                # The rows name the calls in flight should this instance die during them.
                await self._store.record_calls(h.run.id, calls, micros(self._clock))
            if not await self._continue_step(h, agent, calls):
                return
            messages = await self._context(h, agent)

    async def _ask_again(self, h: RunHandle, agent: AgentSnapshot, mismatch: str) -> list[ChatMessage]:
        """The one retry of an answer that did not match its schema: the mismatch goes into the
        conversation as a user message (stored, so the history shows why a second answer follows)."""
        await self._conversation.append(
            h.session.conversation_id,
            role="user",
            content=repair_prompt(mismatch),
            metadata={"run_id": h.run.id, "repair": "true"},
            request_id=f"run:{h.run.id}:repair",
            token=h.caller.token,
        )
        return await self._context(h, agent)

    @staticmethod
    def _format(h: RunHandle, agent: AgentSnapshot) -> ResponseFormat | None:
        """The message's response format wins over its agent's; a text format is None."""
        fmt = h.run.response_format or agent.response_format
        return fmt if fmt is not None and fmt.json else None

    def _check_limits(self, h: RunHandle) -> None:
        tier = limits_for(h.caller.tier)
        if h.step >= tier.max_steps_per_run:
            raise errors.ResourceExhausted(
                f"the run reached its limit of {tier.max_steps_per_run} model steps (tier {tier.name})",
                retry_after=0.0,
                reason="RUN_LIMIT",
            )
        started = h.run.start_time_us or micros(self._clock)
        if micros(self._clock) - started > tier.max_run_seconds * 1_000_000:
            raise errors.ResourceExhausted(
                f"the run took longer than {tier.max_run_seconds} s (tier {tier.name})",
                retry_after=0.0,
                reason="RUN_LIMIT",
            )

    async def _agent(self, h: RunHandle) -> AgentSnapshot:
        """A resumed run: its stored row (steps, start time) and its agent."""
        run = await self._store.get_run(h.caller.tenant_id, h.run.id)
        if run is None:
            raise Lost()
        h.run, h.step, h.usage = run, run.steps, run.usage
        agent = await self._agents.get(h.session.agent_id, tenant_id=h.caller.tenant_id, token=h.caller.token)
        h.agent_version = agent.version
        return agent

    async def _context(self, h: RunHandle, agent: AgentSnapshot) -> list[ChatMessage]:
        budget = agent.max_context_tokens or limits_for(h.caller.tier).max_context_tokens
        return await self._conversation.context(
            h.session.conversation_id,
            token_budget=budget,
            system_prompt=agent.system_prompt,
            token=h.caller.token,
        )

    async def _continue_step(self, h: RunHandle, agent: AgentSnapshot, calls: list[RunToolCall]) -> bool:
        """Runs the step's http calls that may run, then either waits (False: the worker is done,
        the run is rows in PostgreSQL) or stores every result for the model's next step (True)."""
        running = [c for c in calls if c.status is ToolCallStatus.RUNNING]
        if running:
            secret = (
                await self._store.tool_secret(
                    h.caller.tenant_id, new_secret=secrets.token_hex(32), now_us=micros(self._clock)
                )
            ).encode()
            done = await asyncio.gather(*(self._http_call(h, agent, c, secret) for c in running))
            by_id = {c.id: c for c in done}
            calls = [by_id.get(c.id, c) for c in calls]
        state = waiting_state(calls)
        if state is not None:
            await self._wait(h, state, calls)
            return False
        executed = sum(1 for c in calls if c.status is ToolCallStatus.COMPLETED)
        h.usage = summed(h.usage, Usage(), tool_calls=executed)
        for call in calls:
            await self._conversation.append(
                h.session.conversation_id,
                role="tool",
                content=result_text(call),
                metadata={"run_id": h.run.id, "is_error": str(call.is_error).lower()},
                request_id=f"run:{h.run.id}:tool:{call.id}",
                token=h.caller.token,
                tool_call_id=call.id,
            )
        return True

    async def _http_call(
        self, h: RunHandle, agent: AgentSnapshot, call: RunToolCall, secret: bytes
    ) -> RunToolCall:
        await self._emit(h, EventType.TOOL_CALL_STARTED, tool_calls=(call,))
        done = await run_http(self._tool_executor, agent, call, run_id=h.run.id, secret=secret)
        await self._store.answer_call(
            h.run.id, done, from_status=ToolCallStatus.RUNNING, now_us=micros(self._clock)
        )
        # The call carries its duration and, on failure, is_error with the cause as its output.
        await self._emit(h, EventType.TOOL_CALL_COMPLETED, tool_calls=(done,))
        return done

    async def _wait(self, h: RunHandle, state: RunState, calls: list[RunToolCall]) -> None:
        """The run becomes rows: its state, its wait's end and the step's calls; then it lets go of
        everything it held (lease, concurrency slot, worker) and says what it waits for."""
        now = micros(self._clock)
        h.finishing = True
        expire = now + round(self._tool_wait_seconds * 1_000_000)
        if not await self._store.wait_run(
            h.run.id,
            state=state,
            calls=calls,
            step=h.step,
            wait_expire_us=expire,
            last_event_id=h.next_event_id,
            now_us=now,
        ):
            raise Lost()
        # The sum so far goes with the rows: the worker that resumes the run may be another's.
        await self._store.update_run(
            h.run.id,
            prompt_tokens=h.usage.prompt_tokens,
            completion_tokens=h.usage.completion_tokens,
            model=h.usage.model or None,
            usage_source=h.usage.source or None,
            tool_calls=h.usage.tool_calls,
            duration_ms=h.usage.duration_ms,
        )
        await self._limits.release(h.caller.tenant_id, h.run.id)
        pending = tuple(c for c in calls if c.status.pending)
        shown = (
            tuple(c for c in pending if c.status is ToolCallStatus.AWAITING_APPROVAL)
            if state is RunState.REQUIRES_APPROVAL
            else pending
        )
        await self._emit(
            h,
            EventType.APPROVAL_REQUESTED
            if state is RunState.REQUIRES_APPROVAL
            else EventType.TOOL_CALLS_REQUESTED,
            tool_calls=shown,
        )

    async def _prepare(self, h: RunHandle) -> tuple[AgentSnapshot, list[ChatMessage]]:
        """Waits for the runs before it, starts the run, stores the user message, reads the context."""
        for previous in h.wait_for:
            await self._wait_until_ended(h.caller.tenant_id, previous)
        self.line.enter(h.run.id)
        async with self.line.slot():
            return await self._start(h)

    async def _start(self, h: RunHandle) -> tuple[AgentSnapshot, list[ChatMessage]]:
        caller, session = h.caller, h.session
        agent = await self._agents.get(session.agent_id, tenant_id=caller.tenant_id, token=caller.token)
        h.agent_version = agent.version
        if not await self._store.begin_run(
            h.run.id, session_id=session.id, agent_version=agent.version, now_us=micros(self._clock)
        ):
            raise Lost()
        await self._emit(h, EventType.RUN_STARTED)
        user_message_id = await self._user_message(h)
        # The row's user message and first step are written while the context is read: one
        # statement on the way to the first delta instead of two in a row before the read.
        record = asyncio.ensure_future(self._store.record_start(h.run.id, user_message_id=user_message_id))
        try:
            messages = await self._context(h, agent)
        except BaseException:
            record.cancel()
            await asyncio.wait([record])
            if not record.cancelled():
                record.exception()  # retrieved: the run fails with the read's error
            raise
        await record
        return agent, messages

    async def _user_message(self, h: RunHandle) -> str:
        """The user message the run answers, made the active leaf: appended (SendMessage), a new
        version of an earlier one (EditMessage), or the stored one answered again (RegenerateAnswer).
        Done when the run starts, after the runs before it, so their answers stay on their branch."""
        run, conversation_id, token = h.run, h.session.conversation_id, h.caller.token
        if run.regenerate_from:
            await self._conversation.switch(conversation_id, run.regenerate_from, exact=True, token=token)
            return run.regenerate_from
        if run.edit_of:
            return await self._conversation.edit(
                conversation_id,
                run.edit_of,
                content=run.input_text,
                metadata={"run_id": run.id},
                request_id=f"run:{run.id}:user",
                token=token,
            )
        return await self._conversation.append(
            conversation_id,
            role="user",
            content=run.input_text,
            metadata={"run_id": run.id},
            request_id=f"run:{run.id}:user",
            token=token,
        )

    async def model_step(self, h: RunHandle, agent: AgentSnapshot, messages: list[ChatMessage]) -> StepResult:
        """One call of the model: streams its deltas as events, then stores and announces the answer.

        The message's override or the agent's model answers; when it fails before its first token
        with an error another model may not have (FALLBACK_CODES), the agent's fallback models are
        tried in order. After the first token there is no fallback: the client has seen the answer.
        """
        candidates = [h.run.model_override or agent.model, *agent.fallback_models]
        fmt = self._format(h, agent)
        started = time.monotonic()
        for index, name in enumerate(candidates):
            provider, model = self._providers.resolve(name)
            config = ModelConfig(
                model=model,
                temperature=agent.temperature,
                max_output_tokens=agent.max_output_tokens,
                tools=tool_specs(agent),
                response_format=fmt,
            )
            reported: Usage | None = None
            calls: tuple[ToolCall, ...] = ()
            try:
                async for delta in provider.stream(config, messages):
                    if delta.usage is not None:
                        reported = delta.usage
                    calls += delta.tool_calls
                    if delta.text:
                        self._delta(h, delta.text)
            except ProviderError as exc:
                if h.text or exc.code not in FALLBACK_CODES or index == len(candidates) - 1:
                    raise
                h.fallbacks.append(ModelFallback(name, f"{exc.code}: {exc.message}"))
                log.warning(
                    "model failed before its first token; trying the next",
                    extra={"fields": {"run_id": h.run.id, "model": name, "error": exc.code}},
                )
                continue
            break
        self._flush_deltas(h)
        self.line.leave(h.run.id)
        answer = "".join(h.text)
        structured, mismatch = check_answer(fmt, answer) if fmt is not None and not calls else (None, "")
        # An answer with tool calls (or one to be asked again) is not the run's last: a cancel
        # still applies.
        h.finishing = not calls and not mismatch
        # Every delta is out: the client has the whole answer. Storing it waits for the runs on
        # their way to a first delta (briefly; start_line.py).
        await self.line.yield_to_starts()
        usage = metered(
            reported,
            messages,
            answer,
            model=name,
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        h.usage = summed(h.usage, usage)
        assistant_id = await self._conversation.append(
            h.session.conversation_id,
            role="assistant",
            content=answer,
            metadata={"run_id": h.run.id, "agent_version": str(agent.version)},
            request_id=_assistant_request(h),
            token=h.caller.token,
            usage=usage,
            run_id=h.run.id,
            tool_calls=calls,
        )
        await self._emit(
            h,
            EventType.MESSAGE_COMPLETED,
            final_message=answer,
            usage=usage,
            model=name,
            fallbacks=tuple(h.fallbacks),
            structured=structured,
        )
        return StepResult(answer, usage, assistant_id, calls, structured, mismatch)

    async def _complete(self, h: RunHandle, step: StepResult) -> None:
        if not await self._store.finish_run(
            h.run.id,
            state=RunState.COMPLETED,
            now_us=micros(self._clock),
            last_event_id=h.next_event_id,
            usage=h.usage,
            assistant_message_id=step.assistant_message_id,
            fallbacks=tuple(h.fallbacks),
            # The session is free before the terminal event, so whoever sees the event finds it free.
            free_session=True,
        ):
            raise Lost()
        await self._limits.release(h.caller.tenant_id, h.run.id)
        await self._emit(
            h,
            EventType.RUN_COMPLETED,
            usage=h.usage,
            model=step.usage.model,
            fallbacks=tuple(h.fallbacks),
            structured=step.structured,
        )

    def _delta(self, h: RunHandle, text: str) -> None:
        """A delta from the provider: sent at once when none went within the window (a run's
        first delta never waits), else joined to the text the window's timer sends."""
        if h.delta_error is not None:
            self._flush_deltas(h)
        loop = asyncio.get_running_loop()
        # Wider while runs are on their way to a first delta: fewer events for the same text.
        window = self._delta_window * (self.line.busy_window_factor if self.line.busy else 1)
        if not h.pending and loop.time() - h.last_delta_at >= window:
            self._publish_delta(h, text)
            return
        h.pending.append(text)
        if h.flush_timer is None:
            h.flush_timer = loop.call_at(h.last_delta_at + window, self._window_ended, h)

    def _window_ended(self, h: RunHandle) -> None:
        h.flush_timer = None
        if h.abandoned or not h.pending:
            return
        try:
            self._flush_deltas(h)
        except Exception as exc:
            # Raised in the worker at its next delta or event.
            h.delta_error = exc

    def _flush_deltas(self, h: RunHandle, *, quiet: bool = False) -> None:
        """Sends the text the window holds as one event (before any other event of the run, and
        when the window ends). `quiet`: a run that is ending drops what cannot be sent."""
        if h.flush_timer is not None:
            h.flush_timer.cancel()
            h.flush_timer = None
        error, h.delta_error = h.delta_error, None
        if error is None and h.pending:
            text = "".join(h.pending)
            h.pending.clear()
            try:
                self._publish_delta(h, text)
            except Exception as exc:
                error = exc
        h.pending.clear()
        if error is not None and not quiet:
            raise error

    def _publish_delta(self, h: RunHandle, text: str) -> None:
        event = RunEvent(
            event_id=h.next_event_id,
            run_id=h.run.id,
            session_id=h.run.session_id,
            type=EventType.MESSAGE_DELTA,
            agent_version=h.agent_version,
            event_time_us=micros(self._clock),
            text_delta=text,
        )
        try:
            self._events.publish(event)
        except StaleWriter:
            raise Lost() from None
        self._written(h, event)
        h.last_delta_at = asyncio.get_running_loop().time()
        self.line.leave(h.run.id)

    async def _emit(self, h: RunHandle, type_: EventType, **fields: object) -> None:
        # Deltas held by the window go first: event ids follow the order things happened.
        self._flush_deltas(h, quiet=type_.terminal)
        event = RunEvent(
            event_id=h.next_event_id,
            run_id=h.run.id,
            session_id=h.run.session_id,
            type=type_,
            agent_version=h.agent_version,
            event_time_us=micros(self._clock),
            **fields,  # type: ignore[arg-type]  # the optional event fields, by name
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
            raise Lost() from None
        self._written(h, event)

    @staticmethod
    def _written(h: RunHandle, event: RunEvent) -> None:
        h.next_event_id = event.event_id + 1
        if event.text_delta:
            h.text.append(event.text_delta)

    async def _end(self, h: RunHandle, state: RunState, error: RunError) -> None:
        """Ends a run that did not complete: stores its partial answer (unless discarded) and says why."""
        self._flush_deltas(h, quiet=True)
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
                    request_id=_assistant_request(h),
                    token=h.caller.token,
                )
            except errors.AgentmeshError as exc:
                log.warning(
                    "partial answer not stored", extra={"fields": {"run_id": h.run.id, "error": exc.message}}
                )
        ended = await self._store.finish_run(
            h.run.id,
            state=state,
            now_us=micros(self._clock),
            last_event_id=h.next_event_id,
            # What its finished steps used is spent all the same (a limit, a cancel, a failure).
            usage=h.usage if h.usage.total_tokens or h.usage.tool_calls else None,
            error=error,
            assistant_message_id=assistant_id,
            fallbacks=tuple(h.fallbacks),
            free_session=True,
        )
        if ended:
            await self._limits.release(h.caller.tenant_id, h.run.id)
            with contextlib.suppress(Lost):
                await self._emit(
                    h,
                    EventType.RUN_CANCELLED if state is RunState.CANCELLED else EventType.RUN_FAILED,
                    error=error,
                    final_message=partial if keep else "",
                )

    async def _wait_until_ended(self, tenant_id: str, run_id: str) -> None:
        run = await self._store.get_run(tenant_id, run_id)
        if run is None or run.state.terminal:
            return
        async for _event in self._events.tail(run_id, 0):
            pass


def _assistant_request(h: RunHandle) -> str:
    """The request id of the step's assistant message (the first step's is the one runs always had)."""
    return f"run:{h.run.id}:assistant" if h.step <= 1 else f"run:{h.run.id}:assistant:{h.step}"
