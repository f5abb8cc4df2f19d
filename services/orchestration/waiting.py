"""The rules of a waiting run (RUN_STATE_REQUIRES_ACTION / REQUIRES_APPROVAL): how answers are
checked and recorded, and how a wait ends without a worker (cancel, busy policy, expiry).

A waiting run is rows only: any instance answers it; the one whose answer is the step's last
continues it (service.py launches the worker)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Protocol

from services.orchestration.models import (
    AgentSnapshot,
    EventType,
    Run,
    RunError,
    RunEvent,
    RunState,
    RunToolCall,
    ToolCallStatus,
    ToolDecision,
    ToolOutput,
)
from services.orchestration.store import WAITING_STATES
from services.orchestration.tools.arguments import check_arguments
from services.orchestration.tools.runner import approved_status, tool_named
from services.platform import errors
from services.platform.errors import FieldViolation, Violation


class WaitStore(Protocol):
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


class WaitEvents(Protocol):
    async def append(self, event: RunEvent) -> None: ...
    async def last_event_id(self, run_id: str) -> int: ...


def not_waiting(run: Run, expected: RunState) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"run {run.id} is {run.state.name}, not {expected.name}",
        [Violation("run.state", f"the run must be {expected.name}", "RUN_NOT_WAITING")],
        reason="RUN_NOT_WAITING",
    )


def known_calls(
    run: Run, calls: Sequence[RunToolCall], ids: Sequence[str], field: str
) -> dict[str, RunToolCall]:
    """The named calls of the run's waiting step; INVALID_ARGUMENT naming the entry otherwise."""
    if not ids:
        raise errors.InvalidArgument.field(field, "must name at least one call")
    by_id = {c.id: c for c in calls}
    violations = []
    for i, call_id in enumerate(ids):
        if not call_id:
            violations.append(FieldViolation(f"{field}[{i}].tool_call_id", "is required"))
        elif call_id not in by_id:
            violations.append(
                FieldViolation(f"{field}[{i}].tool_call_id", f"run {run.id} has no pending call {call_id!r}")
            )
    if violations:
        raise errors.InvalidArgument("invalid tool call ids", violations)
    return by_id


def answered_outputs(
    calls: dict[str, RunToolCall], outputs: Sequence[ToolOutput], max_bytes: int
) -> list[RunToolCall]:
    """The calls the outputs answer (a repeat of an answered call is left out: idempotent)."""
    answered = []
    for i, o in enumerate(outputs):
        if len(o.output.encode()) > max_bytes:
            raise errors.InvalidArgument.field(f"outputs[{i}].output", f"must be at most {max_bytes} bytes")
        call = calls[o.tool_call_id]
        if call.status is ToolCallStatus.AWAITING_OUTPUT:
            answered.append(
                dataclasses.replace(
                    call, status=ToolCallStatus.COMPLETED, output=o.output, is_error=o.is_error
                )
            )
        elif not call.answered:
            raise errors.FailedPrecondition(
                f"call {call.id} is {call.status.name}, not waiting for an output",
                [
                    Violation(
                        f"outputs[{i}].tool_call_id",
                        "the call does not wait for an output",
                        "CALL_NOT_WAITING",
                    )
                ],
                reason="CALL_NOT_WAITING",
            )
    return answered


def decided_calls(
    agent: AgentSnapshot, calls: dict[str, RunToolCall], decisions: Sequence[ToolDecision]
) -> list[RunToolCall]:
    """The calls the decisions settle: approved (http: to run; client: to wait for its output),
    edited (arguments checked again), denied (the reason is the model's error result)."""
    decided = []
    for i, d in enumerate(decisions):
        field = f"decisions[{i}]"
        call = calls[d.tool_call_id]
        if call.status is not ToolCallStatus.AWAITING_APPROVAL:
            if call.status in (ToolCallStatus.EXPIRED, ToolCallStatus.CANCELLED):
                raise errors.FailedPrecondition(
                    f"call {call.id} is {call.status.name}", reason="CALL_NOT_WAITING"
                )
            continue  # decided before: a repeat changes nothing
        tool = tool_named(agent, call.name)
        if d.deny_reason is not None:
            reason = d.deny_reason.strip() or "no reason given"
            decided.append(
                dataclasses.replace(
                    call, status=ToolCallStatus.DENIED, output=f"the call was denied: {reason}", is_error=True
                )
            )
            continue
        if d.edited_arguments_json is not None:
            checked = check_arguments(call.name, d.edited_arguments_json, tool.parameters if tool else {})
            if checked.arguments is None:
                raise errors.InvalidArgument.field(f"{field}.edited_arguments_json", checked.error)
            call = dataclasses.replace(call, arguments_json=json.dumps(checked.arguments))
        elif not d.approve:
            raise errors.InvalidArgument.field(
                f"{field}.approve",
                "must be true, or deny with deny_reason, or edit with edited_arguments_json",
            )
        if tool is None:
            decided.append(
                dataclasses.replace(
                    call,
                    status=ToolCallStatus.COMPLETED,
                    output=f"the agent has no tool {call.name!r}",
                    is_error=True,
                )
            )
        else:
            decided.append(dataclasses.replace(call, status=approved_status(tool)))
    return decided


async def end_waiting(
    store: WaitStore,
    events: WaitEvents,
    run: Run,
    *,
    state: RunState,
    error: RunError,
    call_status: ToolCallStatus,
    now_us: int,
) -> bool:
    """Ends a waiting run where no worker is (cancel, busy policy, expiry): its end, its pending
    calls' status, the session freed, the terminal event. False when it had stopped waiting."""
    last = await events.last_event_id(run.id)
    if not await store.finish_run(
        run.id, state=state, now_us=now_us, last_event_id=last + 1, error=error, from_states=WAITING_STATES
    ):
        return False
    await store.close_pending_calls(run.id, call_status, now_us)
    await store.set_active_run(run.session_id, None, now_us, only_if=run.id)
    await events.append(
        RunEvent(
            event_id=last + 1,
            run_id=run.id,
            session_id=run.session_id,
            type=EventType.RUN_CANCELLED if state is RunState.CANCELLED else EventType.RUN_FAILED,
            error=error,
            agent_version=run.agent_version,
            event_time_us=now_us,
        )
    )
    return True
