"""One model step's tool calls: what each call needs (plan), running the http ones, and what the run
waits for. Pure rules plus the executor call; the worker stores and announces."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from services.orchestration.models import (
    AgentSnapshot,
    AgentTool,
    RunState,
    RunToolCall,
    ToolCallStatus,
    ToolExecution,
)
from services.orchestration.providers import ToolCall, ToolSpec
from services.orchestration.tools.arguments import check_arguments
from services.orchestration.tools.http import HttpToolExecutor
from services.orchestration.tools.models import HttpTool, ToolCallRequest


def tool_specs(agent: AgentSnapshot) -> tuple[ToolSpec, ...]:
    return tuple(ToolSpec(t.name, t.description, t.parameters) for t in agent.tools)


def tool_named(agent: AgentSnapshot, name: str) -> AgentTool | None:
    return next((t for t in agent.tools if t.name == name), None)


def plan(agent: AgentSnapshot, calls: Sequence[ToolCall], step: int) -> list[RunToolCall]:
    """The step's calls with what each waits for. A call of an unknown tool or with arguments its
    schema refuses already has its (error) result: it reaches no tool, client or approver."""
    planned = []
    for call in calls:
        tool = tool_named(agent, call.name)
        base = RunToolCall(
            id=call.id,
            name=call.name,
            arguments_json=call.arguments_json,
            status=ToolCallStatus.COMPLETED,
            step=step,
            execution=tool.execution if tool else ToolExecution.CLIENT,
            requires_approval=bool(tool and tool.requires_approval),
        )
        if tool is None:
            planned.append(
                dataclasses.replace(base, output=f"the agent has no tool {call.name!r}", is_error=True)
            )
            continue
        checked = check_arguments(call.name, call.arguments_json, tool.parameters)
        if checked.error:
            planned.append(dataclasses.replace(base, output=checked.error, is_error=True))
        elif tool.requires_approval:
            planned.append(dataclasses.replace(base, status=ToolCallStatus.AWAITING_APPROVAL))
        else:
            planned.append(dataclasses.replace(base, status=approved_status(tool)))
    return planned


def approved_status(tool: AgentTool) -> ToolCallStatus:
    """An http call runs (on the worker); a client call waits for the client's output."""
    return ToolCallStatus.RUNNING if tool.execution is ToolExecution.HTTP else ToolCallStatus.AWAITING_OUTPUT


def waiting_state(calls: Sequence[RunToolCall]) -> RunState | None:
    """What the run waits for after its http calls ran: approvals first, then client outputs."""
    statuses = {c.status for c in calls}
    if ToolCallStatus.AWAITING_APPROVAL in statuses:
        return RunState.REQUIRES_APPROVAL
    if ToolCallStatus.AWAITING_OUTPUT in statuses:
        return RunState.REQUIRES_ACTION
    return None


def result_text(call: RunToolCall) -> str:
    """What the model reads as the call's result."""
    return call.output or ("(no output)" if call.status is ToolCallStatus.COMPLETED else call.status.value)


async def run_http(
    executor: HttpToolExecutor, agent: AgentSnapshot, call: RunToolCall, *, run_id: str, secret: bytes
) -> RunToolCall:
    """Executes one http call (its arguments were checked); every failure is an error result."""
    tool = tool_named(agent, call.name)
    if tool is None or tool.execution is not ToolExecution.HTTP:
        return dataclasses.replace(
            call,
            status=ToolCallStatus.COMPLETED,
            output=f"tool {call.name!r} is no longer an http tool",
            is_error=True,
        )
    checked = check_arguments(call.name, call.arguments_json, tool.parameters)
    if checked.arguments is None:
        return dataclasses.replace(call, status=ToolCallStatus.COMPLETED, output=checked.error, is_error=True)
    result = await executor.execute(
        ToolCallRequest(call.id, call.name, checked.arguments, run_id),
        HttpTool(tool.url, tool.timeout_ms),
        secret,
    )
    return dataclasses.replace(
        call,
        status=ToolCallStatus.COMPLETED,
        output=result.output,
        is_error=result.is_error,
        duration_ms=result.duration_ms,
    )
