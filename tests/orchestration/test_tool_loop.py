"""The agent loop over real servers (orchestration on PostgreSQL and Redis, fake agents and
conversation on gRPC, a real HTTP tool server): http tools executed and signed, client tools
answered with SubmitToolOutputs, approvals, and the refusals of bad answers."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from google.protobuf import struct_pb2

from agentmesh.agents.v1 import agents_service_pb2 as apb
from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from tests.orchestration.conftest import FAST
from tests.tools_server import ToolServer

TOOLS = dataclasses.replace(FAST, tool_allowed_hosts=("127.0.0.1",))
E = pb.RunEventType


def _schema() -> struct_pb2.Struct:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
    return schema


def _tool(name: str, **kw: object) -> apb.Tool:
    return apb.Tool(name=name, description=name, parameters=_schema(), **kw)  # type: ignore[arg-type]


def _messages(mesh, session: pb.Session) -> list[cpb.Message]:  # type: ignore[no-untyped-def]
    return list(mesh.conversation.conversations[session.conversation_id].messages)


async def test_an_http_tool_runs_signed_and_the_model_answers_with_its_result(make_mesh):
    mesh = await make_mesh(options=TOOLS)
    secret = (
        await mesh.stub.RotateToolSigningSecret(
            pb.RotateToolSigningSecretRequest(), metadata=mesh.md(roles=("owner",))
        )
    ).secret
    server = await ToolServer(secret.encode()).start()
    try:
        tool = _tool("lookup", execution=apb.TOOL_EXECUTION_HTTP, url=server.url("echo"))
        session = await mesh.session(model="echo:tools", tools=[tool])
        events = await mesh.send(session.id, "hello")
    finally:
        await server.stop()
    types = [e.type for e in events]
    assert types[-1] == E.RUN_EVENT_TYPE_RUN_COMPLETED, events[-1]
    assert E.RUN_EVENT_TYPE_TOOL_CALL_STARTED in types and E.RUN_EVENT_TYPE_TOOL_CALL_COMPLETED in types
    completed = next(e for e in events if e.type == E.RUN_EVENT_TYPE_TOOL_CALL_COMPLETED).tool_calls[0]
    assert not completed.is_error and completed.status == pb.TOOL_CALL_STATUS_COMPLETED
    assert [c.verified for c in server.calls] == [True]
    assert server.calls[0].body["arguments"] == {"text": "hello"}
    stored = _messages(mesh, session)
    roles = [m.role for m in stored]
    assert roles == [
        cpb.MESSAGE_ROLE_USER,
        cpb.MESSAGE_ROLE_ASSISTANT,
        cpb.MESSAGE_ROLE_TOOL,
        cpb.MESSAGE_ROLE_ASSISTANT,
    ]
    assert stored[1].tool_calls[0].name == "lookup"
    assert stored[2].tool_call_id == stored[1].tool_calls[0].id
    assert stored[3].content.startswith("Tool results: ")
    assert '"echo"' in stored[3].content


async def test_a_refused_tool_address_is_an_error_result_and_the_run_goes_on(make_mesh):
    mesh = await make_mesh(options=FAST)  # 127.0.0.1 not allowed
    tool = _tool("lookup", execution=apb.TOOL_EXECUTION_HTTP, url="http://127.0.0.1:9/echo")
    session = await mesh.session(model="echo:tools", tools=[tool])
    events = await mesh.send(session.id, "hello")
    assert events[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    completed = next(e for e in events if e.type == E.RUN_EVENT_TYPE_TOOL_CALL_COMPLETED).tool_calls[0]
    assert completed.is_error and "refused" in completed.output


async def test_a_client_tool_round_trip_over_grpc(make_mesh):
    mesh = await make_mesh(options=TOOLS)
    session = await mesh.session(model="echo:tools", tools=[_tool("ask_user")])
    events = await mesh.send(session.id, "hi")
    assert events[-1].type == E.RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED
    run_id, call = events[-1].run_id, events[-1].tool_calls[0]
    assert call.status == pb.TOOL_CALL_STATUS_AWAITING_OUTPUT
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_REQUIRES_ACTION and [c.id for c in run.pending_tool_calls] == [call.id]
    assert run.wait_expire_time.seconds > 0

    reply = await mesh.stub.SubmitToolOutputs(
        pb.SubmitToolOutputsRequest(
            run_id=run_id, outputs=[pb.ToolOutput(tool_call_id=call.id, output='{"answer": 42}')]
        ),
        metadata=mesh.md(),
    )
    assert reply.run.state in (pb.RUN_STATE_RUNNING, pb.RUN_STATE_COMPLETED)
    joined = [
        r.event
        async for r in mesh.stub.JoinRun(
            pb.JoinRunRequest(run_id=run_id, after_event_id=events[-1].event_id), metadata=mesh.md()
        )
    ]
    assert joined[0].event_id == events[-1].event_id + 1
    assert joined[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    assert _messages(mesh, session)[-1].content == 'Tool results: {"answer": 42}'
    # The same answer again is harmless.
    again = await mesh.stub.SubmitToolOutputs(
        pb.SubmitToolOutputsRequest(
            run_id=run_id, outputs=[pb.ToolOutput(tool_call_id=call.id, output='{"answer": 42}')]
        ),
        metadata=mesh.md(),
    )
    assert again.run.state == pb.RUN_STATE_COMPLETED


async def test_approval_denied_is_the_models_error_result(make_mesh):
    mesh = await make_mesh(options=TOOLS)
    session = await mesh.session(model="echo:tools", tools=[_tool("delete", requires_approval=True)])
    events = await mesh.send(session.id, "hi")
    assert events[-1].type == E.RUN_EVENT_TYPE_APPROVAL_REQUESTED
    run_id, call = events[-1].run_id, events[-1].tool_calls[0]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.stub.DecideToolCalls(
            pb.DecideToolCallsRequest(run_id=run_id, decisions=[pb.ToolDecision(tool_call_id=call.id)]),
            metadata=mesh.md(sub="user-2"),
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    await mesh.stub.DecideToolCalls(
        pb.DecideToolCallsRequest(
            run_id=run_id, decisions=[pb.ToolDecision(tool_call_id=call.id, deny_reason="not today")]
        ),
        metadata=mesh.md(),
    )
    joined = [
        r.event
        async for r in mesh.stub.JoinRun(
            pb.JoinRunRequest(run_id=run_id, after_event_id=events[-1].event_id), metadata=mesh.md()
        )
    ]
    assert joined[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    assert "not today" in _messages(mesh, session)[-1].content


async def test_bad_answers_are_refused_with_their_field(make_mesh):
    mesh = await make_mesh(options=TOOLS)
    session = await mesh.session(model="echo:tools", tools=[_tool("ask_user")])
    events = await mesh.send(session.id, "hi")
    run_id = events[-1].run_id

    async def submit(run: str, call_id: str, **kw: object) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await mesh.stub.SubmitToolOutputs(
                pb.SubmitToolOutputsRequest(run_id=run, outputs=[pb.ToolOutput(tool_call_id=call_id)]),
                **kw,  # type: ignore[arg-type]
            )
        return err.value.code()

    assert (
        await submit("00000000-0000-0000-0000-000000000000", "x", metadata=mesh.md())
        == grpc.StatusCode.NOT_FOUND
    )
    assert await submit(run_id, "call_9_9", metadata=mesh.md()) == grpc.StatusCode.INVALID_ARGUMENT
    assert await submit(run_id, "x", metadata=mesh.md(tenant="other-tenant")) == grpc.StatusCode.NOT_FOUND
    # Approvals on a run waiting for outputs: not waiting for that.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.stub.DecideToolCalls(
            pb.DecideToolCallsRequest(
                run_id=run_id, decisions=[pb.ToolDecision(tool_call_id="call_1_0", approve=True)]
            ),
            metadata=mesh.md(),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_REQUIRES_ACTION
