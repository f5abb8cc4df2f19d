"""Waiting runs over real servers (orchestration on PostgreSQL and Redis, fake agents and
conversation on gRPC): resumed on another instance (with the message's response format), expired by
the sweeper, cancelled, decided (approve, edit, who may), refused outputs; the step limit and a run's
usage across its steps; a run whose instance died during an http call names that call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator

import grpc
import jsonschema
import pytest
from google.protobuf import json_format

from agentmesh.agents.v1 import agents_service_pb2 as apb
from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from services.orchestration.models import Usage
from services.orchestration.providers import (
    ChatMessage,
    Delta,
    EchoProvider,
    ModelConfig,
    Providers,
    ToolCall,
)
from services.orchestration.providers.echo import structured_answer
from tests.orchestration.conftest import Mesh
from tests.orchestration.test_structured import _format
from tests.orchestration.test_tool_loop import TOOLS, _messages, _tool
from tests.tools_server import ToolServer

E = pb.RunEventType


class LoopProvider:
    """Calls the agent's first tool at every step; with `answer_after`, answers once that many
    results are in the context; `tool` names another tool to call. Reports 10 prompt and 3 completion tokens a call, 7 and 1 an answer."""

    def __init__(self, answer_after: int | None = None, tool: str = ""):
        self.answer_after, self.tool = answer_after, tool

    async def stream(self, config: ModelConfig, messages: list[ChatMessage]) -> AsyncIterator[Delta]:
        results = sum(1 for m in messages if m.role == "tool")
        if self.answer_after is not None and results >= self.answer_after:
            yield Delta("done", Usage(7, 1))
            return
        call = ToolCall(
            id=f"call_{results + 1}_0", name=self.tool or config.tools[0].name, arguments_json='{"text": "x"}'
        )
        yield Delta("", Usage(10, 3), tool_calls=(call,))


def _providers(loop: LoopProvider) -> Providers:
    return Providers({"echo": EchoProvider(), "loop": loop})


async def _join(mesh: Mesh, run_id: str, after: int) -> list[pb.RunEvent]:
    call = mesh.stub.JoinRun(pb.JoinRunRequest(run_id=run_id, after_event_id=after), metadata=mesh.md())
    return [r.event async for r in call]


async def _waiting(mesh: Mesh, *tools: apb.Tool) -> tuple[pb.Session, pb.RunEvent]:
    session = await mesh.session(model="echo:tools", tools=list(tools))
    events = await mesh.send(session.id, "hi")
    assert events[-1].type in (E.RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED, E.RUN_EVENT_TYPE_APPROVAL_REQUESTED)
    return session, events[-1]


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code()


async def _submit(mesh: Mesh, run_id: str, call_id: str, output: str = "{}") -> pb.Run:
    request = pb.SubmitToolOutputsRequest(
        run_id=run_id, outputs=[pb.ToolOutput(tool_call_id=call_id, output=output)]
    )
    return (await mesh.stub.SubmitToolOutputs(request, metadata=mesh.md())).run


async def test_a_run_waiting_on_a_stopped_instance_is_resumed_by_another(make_mesh):
    first = await make_mesh(options=TOOLS)
    second = await make_mesh(options=TOOLS, share=first)
    session, wait = await _waiting(first, _tool("ask_user"))
    await first.server.stop(0)  # the instance that ran the first step is gone
    await _submit(second, wait.run_id, wait.tool_calls[0].id, '"from the client"')
    joined = await _join(second, wait.run_id, wait.event_id)
    assert [e.event_id for e in joined] == list(range(wait.event_id + 1, wait.event_id + 1 + len(joined)))
    assert joined[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    assert _messages(second, session)[-1].content == 'Tool results: "from the client"'


async def test_an_unanswered_wait_expires(make_mesh):
    mesh = await make_mesh(options=dataclasses.replace(TOOLS, tool_wait_seconds=0.3))
    _, wait = await _waiting(mesh, _tool("ask_user"))
    joined = await _join(mesh, wait.run_id, wait.event_id)  # the sweeper ends it (0.2 s interval)
    assert joined[-1].type == E.RUN_EVENT_TYPE_RUN_FAILED
    assert joined[-1].error.code == "DEADLINE_EXCEEDED"
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=wait.run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_FAILED and not run.pending_tool_calls
    calls = await mesh.orch._store.step_calls(wait.run_id, 1)  # type: ignore[attr-defined]
    assert [c.status.name for c in calls] == ["EXPIRED"]
    assert (
        await _code(_submit(mesh, wait.run_id, wait.tool_calls[0].id)) == grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_cancel_while_waiting(make_mesh):
    mesh = await make_mesh(options=TOOLS)
    _, wait = await _waiting(mesh, _tool("ask_user"))
    run = (await mesh.stub.CancelRun(pb.CancelRunRequest(run_id=wait.run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_CANCELLED
    assert (await _join(mesh, wait.run_id, wait.event_id))[-1].type == E.RUN_EVENT_TYPE_RUN_CANCELLED
    calls = await mesh.orch._store.step_calls(wait.run_id, 1)  # type: ignore[attr-defined]
    assert [c.status.name for c in calls] == ["CANCELLED"]
    assert (
        await _code(_submit(mesh, wait.run_id, wait.tool_calls[0].id)) == grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_an_output_over_the_cap_is_refused_and_the_run_still_waits(make_mesh):
    mesh = await make_mesh(options=dataclasses.replace(TOOLS, tool_max_output_bytes=100))
    _, wait = await _waiting(mesh, _tool("ask_user"))
    code = await _code(_submit(mesh, wait.run_id, wait.tool_calls[0].id, "x" * 101))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=wait.run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_REQUIRES_ACTION and len(run.pending_tool_calls) == 1


async def test_approve_and_edit_and_who_decides(make_mesh):
    mesh = await make_mesh(options=TOOLS)
    session, wait = await _waiting(
        mesh, _tool("first", requires_approval=True), _tool("second", requires_approval=True)
    )
    run_id, (a, b) = wait.run_id, wait.tool_calls

    def decide(md: object, *decisions: pb.ToolDecision) -> object:
        return mesh.stub.DecideToolCalls(
            pb.DecideToolCallsRequest(run_id=run_id, decisions=decisions), metadata=md
        )

    approve = pb.ToolDecision(tool_call_id=a.id, approve=True)
    # To a member of the tenant who is not the session's user the run does not exist.
    assert await _code(decide(mesh.md(sub="user-2"), approve)) == grpc.StatusCode.NOT_FOUND
    bad_edit = pb.ToolDecision(tool_call_id=b.id, edited_arguments_json='{"text": 1}')
    assert await _code(decide(mesh.md(), bad_edit)) == grpc.StatusCode.INVALID_ARGUMENT
    await decide(mesh.md(sub="boss", roles=("admin",)), approve)  # an admin of the tenant may
    edit = pb.ToolDecision(tool_call_id=b.id, edited_arguments_json='{"text": "edited"}')
    await decide(mesh.md(), edit)
    # Approved client tools go on to wait for their outputs, the edited one with its new arguments.
    asked = (await _join(mesh, run_id, wait.event_id))[-1]
    assert asked.type == E.RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED
    arguments = {c.id: c.arguments_json for c in asked.tool_calls}
    assert '"edited"' in arguments[b.id] and '"hi"' in arguments[a.id]
    for call in (a, b):
        await _submit(mesh, run_id, call.id, f'"{call.name} done"')
    assert (await _join(mesh, run_id, asked.event_id))[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    stored = _messages(mesh, session)
    # The history reads in order: question, the calls, one result per call, the answer.
    assert [m.role for m in stored] == [
        cpb.MESSAGE_ROLE_USER,
        cpb.MESSAGE_ROLE_ASSISTANT,
        cpb.MESSAGE_ROLE_TOOL,
        cpb.MESSAGE_ROLE_TOOL,
        cpb.MESSAGE_ROLE_ASSISTANT,
    ]
    assert [c.id for c in stored[1].tool_calls] == [m.tool_call_id for m in stored[2:4]] == [a.id, b.id]
    assert stored[-1].content == 'Tool results: "first done"; "second done"'


async def test_the_step_limit_of_the_free_tier_fails_the_run(make_mesh):
    # A call of a tool the agent does not have is answered at once (an error result), so nothing waits.
    mesh = await make_mesh(options=TOOLS, providers=_providers(LoopProvider(tool="missing")))
    session = await mesh.session(model="loop:x", tools=[_tool("nothing")])
    events = await mesh.send(session.id, "go", metadata=mesh.md(tier="free"))
    assert events[-1].type == E.RUN_EVENT_TYPE_RUN_FAILED, events[-1]
    assert events[-1].error.code == "RESOURCE_EXHAUSTED" and "4 model steps" in events[-1].error.message
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=events[-1].run_id), metadata=mesh.md())).run
    assert run.steps == 4


async def test_a_runs_usage_is_the_sum_of_its_steps_and_counts_the_calls_executed(make_mesh):
    mesh = await make_mesh(options=TOOLS, providers=_providers(LoopProvider(answer_after=2)))
    secret = (
        await mesh.stub.RotateToolSigningSecret(
            pb.RotateToolSigningSecretRequest(), metadata=mesh.md(roles=("owner",))
        )
    ).secret
    server = await ToolServer(secret.encode()).start()
    try:
        tool = _tool("lookup", execution=apb.TOOL_EXECUTION_HTTP, url=server.url("echo"))
        session = await mesh.session(model="loop:x", tools=[tool])
        events = await mesh.send(session.id, "go")
    finally:
        await server.stop()
    assert events[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED, events[-1]
    assert len(server.calls) == 2
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=events[-1].run_id), metadata=mesh.md())).run
    # Two steps that called the tool (10 + 3 each), one that answered (7 + 1).
    for usage in (run.usage, events[-1].usage):
        assert (usage.prompt_tokens, usage.completion_tokens, usage.tool_calls) == (27, 7, 2)
    # Each stored step carries its own usage (conversation prices and counts per message).
    answers = [m for m in _messages(mesh, session) if m.role == cpb.MESSAGE_ROLE_ASSISTANT]
    assert [m.usage.prompt_tokens for m in answers] == [10, 10, 7]


SUMMARY = {
    "type": "object",
    "properties": {"summary": {"type": "string"}, "length": {"type": "integer"}},
    "required": ["summary", "length"],
    "additionalProperties": False,
}


async def test_a_messages_response_format_survives_a_tool_wait_resumed_on_another_instance(make_mesh):
    first = await make_mesh(options=TOOLS)
    second = await make_mesh(options=TOOLS, share=first)
    session = await first.session(model="echo:tools", tools=[_tool("ask_user")])  # the agent answers text
    events = await first.send(session.id, "hi", response_format=_format(SUMMARY))
    wait = events[-1]
    assert wait.type == E.RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED
    await first.server.stop(0)  # nothing of the message is left in the admitting instance's memory
    await _submit(second, wait.run_id, wait.tool_calls[0].id, '"sunny"')
    final = (await _join(second, wait.run_id, wait.event_id))[-1]
    assert final.type == E.RUN_EVENT_TYPE_RUN_COMPLETED, final
    answer = json.loads(_messages(second, session)[-1].content)
    jsonschema.validate(answer, SUMMARY)
    assert answer == structured_answer(SUMMARY, 'Tool results: "sunny"')
    assert final.HasField("structured")
    assert json_format.MessageToDict(final.structured)["summary"] == answer["summary"]


async def _until(check: object, seconds: float = 5.0) -> None:
    for _ in range(round(seconds / 0.02)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_a_run_killed_during_an_http_call_fails_naming_the_call_in_flight(make_mesh):
    first = await make_mesh(options=TOOLS)
    second = await make_mesh(options=TOOLS, share=first)
    server = await ToolServer(b"any secret").start()  # /slow answers only when the server stops
    try:
        tool = _tool("lookup", execution=apb.TOOL_EXECUTION_HTTP, url=server.url("slow"))
        session = await first.session(model="echo:tools", tools=[tool])
        call = first.stub.SendMessage(
            pb.SendMessageRequest(session_id=session.id, text="hi"), metadata=first.md()
        )
        seen = []
        async for reply in call:
            seen.append(reply.event)
            if reply.event.type == E.RUN_EVENT_TYPE_TOOL_CALL_STARTED:
                break
        call.cancel()
        await _until(lambda: server.calls)  # the call is at the tool
        first.orch.runs.abandon()  # the worker dies without a word, as in a crash
        rest = await _join(second, seen[0].run_id, seen[-1].event_id)
    finally:
        await server.stop()
    started = seen[-1].tool_calls[0]
    assert (started.name, started.id) == ("lookup", "call_1_0")
    failed = rest[-1]
    assert failed.type == E.RUN_EVENT_TYPE_RUN_FAILED and failed.error.code == "UNAVAILABLE"
    # Readers of the stream see the call end (an error result) before the run does, ids unbroken.
    [ended] = [e for e in rest if e.type == E.RUN_EVENT_TYPE_TOOL_CALL_COMPLETED]
    assert ended.tool_calls[0].id == "call_1_0" and ended.tool_calls[0].is_error
    assert "stopped" in ended.tool_calls[0].output
    ids = [e.event_id for e in seen + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert failed.error.message.endswith("while tool calls were in flight: lookup (call_1_0)")
    run = (await second.stub.GetRun(pb.GetRunRequest(run_id=seen[0].run_id), metadata=second.md())).run
    assert run.state == pb.RUN_STATE_FAILED and run.error.message == failed.error.message
    # The call in flight is closed with an error result: no stored call is left without one.
    [closed] = await second.orch._store.step_calls(seen[0].run_id, 1)  # type: ignore[attr-defined]
    assert closed.status.name == "COMPLETED" and closed.is_error
    assert "stopped" in closed.output
