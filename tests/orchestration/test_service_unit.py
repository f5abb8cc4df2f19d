"""OrchestrationService's rules against the fakes of its protocols (no gRPC, PostgreSQL or Redis)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.orchestration.config import OrchestrationOptions
from services.orchestration.models import (
    AgentSnapshot,
    AgentTool,
    BusyPolicy,
    CancelMode,
    EventType,
    Run,
    RunState,
    RunToolCall,
    Session,
    ToolCallStatus,
    ToolDecision,
    ToolOutput,
)
from services.orchestration.service import OrchestrationService
from services.platform import errors
from services.platform.auth import Principal
from services.platform.pagination import PageTokens
from tests.fakes.orchestration import (
    FakeAgents,
    FakeConversation,
    FakeEvents,
    FakeLimits,
    FakeLocks,
    FakeRuns,
    FakeStore,
)


def member(user: str = "u1", tenant: str = "t1", tier: str = "pro") -> Principal:
    return Principal(user_id=user, tenant_id=tenant, roles=frozenset({"member"}), tier=tier)


def admin(tenant: str = "t1") -> Principal:
    return Principal(user_id="boss", tenant_id=tenant, roles=frozenset({"admin"}), tier="pro")


@dataclasses.dataclass
class Parts:
    service: OrchestrationService
    store: FakeStore
    events: FakeEvents
    limits: FakeLimits
    runs: FakeRuns
    agents: FakeAgents

    def agent(self, tenant: str = "t1", **config: Any) -> AgentSnapshot:
        return self.agents.add(
            AgentSnapshot(
                id=f"agent-{tenant}", tenant_id=tenant, version=1, active=True, model="echo", **config
            )
        )

    async def session(self, caller: Principal | None = None, **config: Any) -> Session:
        caller = caller or member()
        agent = self.agent(caller.tenant_id, **config)
        return await self.service.start_session(caller, agent_id=agent.id, title="", request_id="")


@pytest.fixture
def parts() -> Parts:
    store, events, limits = FakeStore(), FakeEvents(), FakeLimits()
    runs, agents = FakeRuns(store, events), FakeAgents()
    ticks = iter(range(1, 1_000_000))
    service = OrchestrationService(
        store=store,
        events=events,
        limits=limits,
        runs=runs,
        agents=agents,
        conversation=FakeConversation(),
        locks=FakeLocks(),
        page_tokens=PageTokens(b"k"),
        options=OrchestrationOptions(cancel_wait_seconds=0.5),
        clock=lambda: float(next(ticks)),
    )
    return Parts(service, store, events, limits, runs, agents)


def sender(parts: Parts, session: Session, caller: Principal | None = None) -> Callable[..., Awaitable[Run]]:
    async def send(text: str = "hi", policy: BusyPolicy | None = None, request_id: str = "") -> Run:
        return await parts.service.send_message(
            caller or member(), session_id=session.id, text=text, request_id=request_id, busy_policy=policy
        )

    return send


async def test_reject_refuses_a_busy_session_and_leaves_nothing_behind(parts: Parts) -> None:
    send = sender(parts, await parts.session())
    first = await send()
    with pytest.raises(errors.FailedPrecondition) as refused:
        await send(policy=BusyPolicy.REJECT)
    assert refused.value.reason == "SESSION_BUSY"
    assert list(parts.store.runs) == [first.id]
    assert list(parts.events.leases) == [first.id]
    assert parts.limits.slots["t1"] == {first.id}
    assert [r.id for r, _ in parts.runs.launched] == [first.id]


async def test_no_policy_means_the_agents_policy_else_reject(parts: Parts) -> None:
    send = sender(parts, await parts.session(busy_policy=BusyPolicy.ENQUEUE))
    first = await send()
    second = await send()  # the agent's ENQUEUE
    assert parts.runs.launched[-1] == (second, [first.id])
    plain = sender(parts, await parts.session(member("u2")), member("u2"))
    parts.agents.agents["agent-t1"] = dataclasses.replace(parts.agents.agents["agent-t1"], busy_policy=None)
    await plain()
    with pytest.raises(errors.FailedPrecondition):
        await plain()


async def test_enqueue_waits_for_the_live_run_without_cancelling_it(parts: Parts) -> None:
    send = sender(parts, await parts.session())
    first = await send()
    second = await send(policy=BusyPolicy.ENQUEUE)
    assert parts.runs.launched[-1] == (second, [first.id])
    assert parts.runs.cancels == []


@pytest.mark.parametrize(
    ("policy", "mode"), [(BusyPolicy.INTERRUPT, CancelMode.KEEP), (BusyPolicy.ROLLBACK, CancelMode.DISCARD)]
)
async def test_interrupt_and_rollback_cancel_the_live_run_then_follow_it(
    parts: Parts, policy: BusyPolicy, mode: CancelMode
) -> None:
    send = sender(parts, await parts.session())
    first = await send()
    second = await send(policy=policy)
    assert parts.runs.cancels == [(first.id, mode)]
    assert parts.runs.launched[-1] == (second, [first.id])


async def test_another_tenants_or_users_session_does_not_exist(parts: Parts) -> None:
    session = await parts.session()
    for stranger in (member(tenant="t2"), member(user="u2")):
        with pytest.raises(errors.NotFound):
            await parts.service.get_session(stranger, session.id)
        with pytest.raises(errors.NotFound):
            await sender(parts, session, stranger)()
    assert (await parts.service.get_session(admin(), session.id)).id == session.id
    assert parts.store.runs == {}


async def test_rate_limit_refusal_admits_nothing(parts: Parts) -> None:
    free = member(tier="free")
    session = await parts.session(free, busy_policy=BusyPolicy.ENQUEUE)
    parts.limits.messages["t1"] = 60  # the free tier's requests per minute, all used
    with pytest.raises(errors.ResourceExhausted):
        await sender(parts, session, free)()
    assert parts.store.runs == {} and parts.runs.launched == [] and parts.events.leases == {}


async def test_concurrency_limit_refusal_admits_nothing_and_frees_no_other_slot(parts: Parts) -> None:
    free = member(tier="free")  # two concurrent runs
    send = sender(parts, await parts.session(free, busy_policy=BusyPolicy.ENQUEUE), free)
    kept = [await send(), await send()]
    with pytest.raises(errors.ResourceExhausted):
        await send()
    assert set(parts.store.runs) == {r.id for r in kept}
    assert parts.limits.slots["t1"] == {r.id for r in kept}
    assert len(parts.runs.launched) == 2


async def test_a_repeated_request_id_returns_the_first_run(parts: Parts) -> None:
    send = sender(parts, await parts.session())
    first = await send(request_id="req-1")
    assert await send(request_id="req-1") == first
    assert len(parts.store.runs) == 1 and len(parts.runs.launched) == 1


@pytest.mark.parametrize("text", ["", "   ", "x" * (32 * 1024 + 1)])
async def test_bad_text_is_invalid_argument_on_the_field(parts: Parts, text: str) -> None:
    send = sender(parts, await parts.session())
    with pytest.raises(errors.InvalidArgument) as bad:
        await send(text=text)
    assert [v.field for v in bad.value.violations] == ["text"]
    assert parts.store.runs == {}


async def test_ending_a_session_cancels_its_runs_and_refuses_new_messages(parts: Parts) -> None:
    session = await parts.session()
    run = await sender(parts, session)()
    ended = await parts.service.end_session(member(), session.id)
    assert ended.end_time_us > 0
    assert parts.runs.cancels == [(run.id, CancelMode.KEEP)]
    with pytest.raises(errors.FailedPrecondition) as refused:
        await sender(parts, session)()
    assert refused.value.reason == "SESSION_ENDED"


# Waiting runs ------------------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


async def waiting_run(parts: Parts, state: RunState, *tools: AgentTool) -> tuple[Run, list[RunToolCall]]:
    """A run the worker left waiting on step 1: one call per tool, as the store holds it."""
    run = await sender(parts, await parts.session(tools=tools))()
    status = (
        ToolCallStatus.AWAITING_APPROVAL
        if state is RunState.REQUIRES_APPROVAL
        else ToolCallStatus.AWAITING_OUTPUT
    )
    calls = [
        RunToolCall(
            id=f"call_1_{i}",
            name=t.name,
            arguments_json='{"text": "hi"}',
            status=status,
            step=1,
            requires_approval=t.requires_approval,
        )
        for i, t in enumerate(tools)
    ]
    parts.store.wait(run.id, state, calls)
    return run, calls


async def test_outputs_for_a_run_that_does_not_wait_are_failed_precondition(parts: Parts) -> None:
    run = await sender(parts, await parts.session())()  # QUEUED: no call waits
    with pytest.raises(errors.FailedPrecondition) as refused:
        await parts.service.submit_tool_outputs(member(), run.id, [ToolOutput("call_1_0", "x")])
    assert refused.value.reason == "RUN_NOT_WAITING"
    approval, calls = await waiting_run(
        parts, RunState.REQUIRES_APPROVAL, AgentTool(name="t", parameters=SCHEMA, requires_approval=True)
    )
    with pytest.raises(errors.FailedPrecondition):
        await parts.service.submit_tool_outputs(member(), approval.id, [ToolOutput(calls[0].id, "x")])
    assert parts.store.calls[approval.id] == calls


async def test_an_unknown_call_or_run_is_refused_and_changes_nothing(parts: Parts) -> None:
    run, calls = await waiting_run(parts, RunState.REQUIRES_ACTION, AgentTool(name="t", parameters=SCHEMA))
    with pytest.raises(errors.InvalidArgument) as bad:
        await parts.service.submit_tool_outputs(member(), run.id, [ToolOutput("call_9_9", "x")])
    assert [v.field for v in bad.value.violations] == ["outputs[0].tool_call_id"]
    with pytest.raises(errors.NotFound):
        await parts.service.submit_tool_outputs(member(), str(uuid.uuid4()), [ToolOutput(calls[0].id, "x")])
    with pytest.raises(errors.NotFound):
        await parts.service.submit_tool_outputs(member(tenant="t2"), run.id, [ToolOutput(calls[0].id, "x")])
    assert parts.store.calls[run.id] == calls and parts.runs.resumed == []


async def test_the_last_output_resumes_once_and_a_repeat_is_harmless(parts: Parts) -> None:
    tools = (AgentTool(name="a", parameters=SCHEMA), AgentTool(name="b", parameters=SCHEMA))
    run, calls = await waiting_run(parts, RunState.REQUIRES_ACTION, *tools)
    first = await parts.service.submit_tool_outputs(member(), run.id, [ToolOutput(calls[0].id, "A")])
    assert first.state is RunState.REQUIRES_ACTION and [c.id for c in first.pending_tool_calls] == [
        calls[1].id
    ]
    assert parts.runs.resumed == []
    await parts.service.submit_tool_outputs(member(), run.id, [ToolOutput(calls[1].id, "B")])
    assert [r for r, _ in parts.runs.resumed] == [run.id]
    assert parts.store.runs[run.id].state is RunState.RUNNING
    assert run.id in parts.limits.slots["t1"] and parts.events.leases[run.id] == "fake-instance"
    again = await parts.service.submit_tool_outputs(member(), run.id, [ToolOutput(calls[1].id, "B")])
    assert again.state is RunState.RUNNING and len(parts.runs.resumed) == 1
    assert [c.output for c in parts.store.calls[run.id]] == ["A", "B"]


async def test_an_output_over_the_cap_is_invalid_and_records_nothing(parts: Parts) -> None:
    run, calls = await waiting_run(parts, RunState.REQUIRES_ACTION, AgentTool(name="t", parameters=SCHEMA))
    cap = OrchestrationOptions().tool_max_output_bytes
    with pytest.raises(errors.InvalidArgument) as bad:
        await parts.service.submit_tool_outputs(member(), run.id, [ToolOutput(calls[0].id, "x" * (cap + 1))])
    assert [v.field for v in bad.value.violations] == ["outputs[0].output"]
    assert parts.store.calls[run.id] == calls


async def test_only_the_sessions_user_or_an_admin_decides(parts: Parts) -> None:
    tool = AgentTool(name="t", parameters=SCHEMA, requires_approval=True)
    run, calls = await waiting_run(parts, RunState.REQUIRES_APPROVAL, tool)
    approve = [ToolDecision(tool_call_id=calls[0].id, approve=True)]
    with pytest.raises(errors.NotFound):
        await parts.service.decide_tool_calls(member("u2"), run.id, approve)
    with pytest.raises(errors.NotFound):
        await parts.service.decide_tool_calls(member(tenant="t2"), run.id, approve)
    assert parts.store.calls[run.id] == calls
    await parts.service.decide_tool_calls(admin(), run.id, approve)
    # A client tool approved goes on to wait for its output.
    assert parts.store.calls[run.id][0].status is ToolCallStatus.AWAITING_OUTPUT


async def test_an_edit_is_checked_against_the_schema_and_a_bad_one_records_nothing(parts: Parts) -> None:
    tool = AgentTool(name="t", parameters=SCHEMA, requires_approval=True)
    run, calls = await waiting_run(parts, RunState.REQUIRES_APPROVAL, tool)
    with pytest.raises(errors.InvalidArgument) as bad:
        await parts.service.decide_tool_calls(
            member(), run.id, [ToolDecision(tool_call_id=calls[0].id, edited_arguments_json='{"text": 5}')]
        )
    assert [v.field for v in bad.value.violations] == ["decisions[0].edited_arguments_json"]
    assert parts.store.calls[run.id] == calls
    await parts.service.decide_tool_calls(
        member(), run.id, [ToolDecision(tool_call_id=calls[0].id, edited_arguments_json='{"text": "edited"}')]
    )
    assert json.loads(parts.store.calls[run.id][0].arguments_json) == {"text": "edited"}


async def test_cancelling_a_waiting_run_ends_it_without_a_worker(parts: Parts) -> None:
    run, _ = await waiting_run(parts, RunState.REQUIRES_ACTION, AgentTool(name="t", parameters=SCHEMA))
    cancelled = await parts.service.cancel_run(member(), run.id)
    assert cancelled.state is RunState.CANCELLED and parts.runs.cancels == []
    assert [c.status for c in parts.store.calls[run.id]] == [ToolCallStatus.CANCELLED]
    assert parts.events.streams[run.id][-1].type is EventType.RUN_CANCELLED
