"""Issue 17: EditMessage, RegenerateAnswer and SwitchBranch through orchestration on a real server with
the real conversation service on PostgreSQL: the new run's messages form a branch, the active path is
what ListMessages and the next run's context see, nothing is deleted; under every busy policy while a
run is live; with a tool run; and bad input (wrong role, another tenant's message, unknown branch)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from agentmesh.agents.v1 import agents_service_pb2 as apb
from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from tests.helpers import expect_status
from tests.orchestration.conftest import RealMesh
from tests.orchestration.test_tool_loop import _tool

E = pb.RunEventType
C = grpc.StatusCode
USER, ASSISTANT, TOOL = cpb.MESSAGE_ROLE_USER, cpb.MESSAGE_ROLE_ASSISTANT, cpb.MESSAGE_ROLE_TOOL


async def _session(mesh: RealMesh, **config: Any) -> pb.Session:
    agent_id = mesh.agents.add(mesh.tenant, **{"model": "echo:default", **config})
    return (
        await mesh.stub.StartSession(pb.StartSessionRequest(agent_id=agent_id), metadata=mesh.md())
    ).session


async def _send(mesh: RealMesh, session_id: str, text: str, **kw: Any) -> list[pb.RunEvent]:
    call = mesh.stub.SendMessage(
        pb.SendMessageRequest(session_id=session_id, text=text, **kw), metadata=mesh.md()
    )
    return [r.event async for r in call]


async def _join(mesh: RealMesh, run_id: str, after: int = 0) -> list[pb.RunEvent]:
    call = mesh.stub.JoinRun(pb.JoinRunRequest(run_id=run_id, after_event_id=after), metadata=mesh.md())
    return [r.event async for r in call]


async def _path(mesh: RealMesh, session: pb.Session, **kw: Any) -> list[cpb.Message]:
    reply = await mesh.conv.ListMessages(
        cpb.ListMessagesRequest(conversation_id=session.conversation_id, page_size=100, **kw),
        metadata=mesh.md(),
    )
    return list(reply.messages)


async def _edit(mesh: RealMesh, session: pb.Session, message_id: str, text: str, **kw: Any) -> pb.Run:
    request = pb.EditMessageRequest(session_id=session.id, message_id=message_id, text=text, **kw)
    return (await mesh.stub.EditMessage(request, metadata=mesh.md())).run


async def _regenerate(mesh: RealMesh, session: pb.Session, message_id: str, **kw: Any) -> pb.Run:
    request = pb.RegenerateAnswerRequest(session_id=session.id, message_id=message_id, **kw)
    return (await mesh.stub.RegenerateAnswer(request, metadata=mesh.md())).run


async def test_edit_regenerate_and_switch(real_mesh: RealMesh) -> None:
    mesh = real_mesh
    session = await _session(mesh)
    await _send(mesh, session.id, "hello")
    await _send(mesh, session.id, "how are you")
    user1, answer1, user2, answer2 = await _path(mesh, session)
    assert [m.content for m in (answer1, answer2)] == ["Echo: hello", "Echo: how are you"]

    # Edit the second question: a sibling, answered; the old exchange stays on its branch.
    run = await _edit(mesh, session, user2.id, "how old are you")
    events = await _join(mesh, run.id)
    assert events[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    assert events[-2].final_message == "Echo: how old are you"
    path = await _path(mesh, session)
    assert [m.content for m in path] == ["hello", "Echo: hello", "how old are you", "Echo: how old are you"]
    assert [m.sequence for m in path] == [1, 2, 3, 4]
    assert list(path[2].sibling_ids) == [user2.id, path[2].id] and path[2].sibling_index == 2
    got = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=run.id), metadata=mesh.md())).run
    assert got.user_message_id == path[2].id and got.assistant_message_id == path[3].id
    old = await _path(mesh, session, branch_message_id=user2.id)
    assert [m.content for m in old][2:] == ["how are you", "Echo: how are you"]

    # Regenerate the first answer: a new run answers "hello" again, its answer a sibling of answer1;
    # the edited exchange below the old answer stays on that branch.
    run = await _regenerate(mesh, session, answer1.id)
    assert run.state == pb.RUN_STATE_QUEUED
    events = await _join(mesh, run.id)
    assert events[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    path = await _path(mesh, session)
    assert [m.content for m in path] == ["hello", "Echo: hello"]
    assert path[1].id != answer1.id and list(path[1].sibling_ids) == [answer1.id, path[1].id]
    got = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=run.id), metadata=mesh.md())).run
    assert got.user_message_id == user1.id

    # The next message follows the active path; its context window holds only that path.
    events = await _send(mesh, session.id, "and you")
    path = await _path(mesh, session)
    assert [m.content for m in path] == ["hello", "Echo: hello", "and you", "Echo: and you"]

    # Switch back to the first answer: down to the newest leaf of its branch.
    switched = await mesh.stub.SwitchBranch(
        pb.SwitchBranchRequest(session_id=session.id, message_id=answer1.id), metadata=mesh.md()
    )
    path = await _path(mesh, session)
    assert switched.active_message_id == path[-1].id
    assert [m.content for m in path] == ["hello", "Echo: hello", "how old are you", "Echo: how old are you"]
    assert path[1].id == answer1.id and path[1].sibling_index == 1
    # Nothing was deleted: 2 questions + 2 answers, the edit and its answer, a regenerated answer,
    # and the last exchange.
    conv = await mesh.conv.GetConversation(
        cpb.GetConversationRequest(conversation_id=session.conversation_id), metadata=mesh.md()
    )
    assert conv.conversation.message_count == 9 and conv.conversation.path_length == 4


async def test_bad_branch_requests(real_mesh: RealMesh) -> None:
    mesh = real_mesh
    session = await _session(mesh)
    await _send(mesh, session.id, "hello")
    user1, answer1 = await _path(mesh, session)
    other = await _session(mesh)
    md = mesh.md()

    error = await expect_status(_edit(mesh, session, answer1.id, "changed"), C.INVALID_ARGUMENT)
    assert "message_id" in (error.details() or "")
    error = await expect_status(_regenerate(mesh, session, user1.id), C.INVALID_ARGUMENT)
    assert "message_id" in (error.details() or "")
    await expect_status(_edit(mesh, session, user1.id, "   "), C.INVALID_ARGUMENT)
    await expect_status(_edit(mesh, session, "", "x"), C.INVALID_ARGUMENT)
    # A message of another session's conversation is not in this one.
    await expect_status(_edit(mesh, other, user1.id, "x"), C.NOT_FOUND)
    # Another tenant: the session does not exist for it.
    for call in (
        mesh.stub.EditMessage(
            pb.EditMessageRequest(session_id=session.id, message_id=user1.id, text="x"),
            metadata=mesh.md(tenant="tenant-else"),
        ),
        mesh.stub.RegenerateAnswer(
            pb.RegenerateAnswerRequest(session_id=session.id, message_id=answer1.id),
            metadata=mesh.md(tenant="tenant-else"),
        ),
        mesh.stub.SwitchBranch(
            pb.SwitchBranchRequest(session_id=session.id, message_id=answer1.id),
            metadata=mesh.md(sub="user-2"),
        ),
    ):
        await expect_status(call, C.NOT_FOUND)
    # An unknown branch.
    await expect_status(
        mesh.stub.SwitchBranch(
            pb.SwitchBranchRequest(session_id=session.id, message_id="no-such"), metadata=md
        ),
        C.NOT_FOUND,
    )
    await expect_status(_path(mesh, session, branch_message_id="no-such"), C.NOT_FOUND)
    # An ended session takes no edit.
    await mesh.stub.EndSession(pb.EndSessionRequest(session_id=session.id), metadata=md)
    await expect_status(_edit(mesh, session, user1.id, "x"), C.FAILED_PRECONDITION)
    assert [m.id for m in await _path(mesh, session)] == [user1.id, answer1.id]
    conv = await mesh.conv.GetConversation(
        cpb.GetConversationRequest(conversation_id=session.conversation_id), metadata=md
    )
    assert conv.conversation.message_count == 2


LONG = " ".join(f"w{i}" for i in range(40))


async def _running(mesh: RealMesh, session: pb.Session) -> tuple[str, Any]:
    """Starts a slow run and returns once its first delta is out (its user message stored)."""
    call = mesh.stub.SendMessage(pb.SendMessageRequest(session_id=session.id, text=LONG), metadata=mesh.md())
    async for reply in call:
        if reply.event.type == E.RUN_EVENT_TYPE_MESSAGE_DELTA:
            return reply.event.run_id, call
    raise AssertionError("the run ended before its first delta")


@pytest.mark.parametrize(
    "policy",
    [apb.BUSY_POLICY_REJECT, apb.BUSY_POLICY_ENQUEUE, apb.BUSY_POLICY_INTERRUPT, apb.BUSY_POLICY_ROLLBACK],
)
async def test_edit_while_a_run_is_live(make_real_mesh, policy: int) -> None:
    mesh: RealMesh = await make_real_mesh(echo_delay=0.05)
    session = await _session(mesh)
    await _send(mesh, session.id, "first")
    first_user, first_answer = await _path(mesh, session)
    live_run, call = await _running(mesh, session)
    # Switching while a run is live is refused under every policy.
    await expect_status(
        mesh.stub.SwitchBranch(
            pb.SwitchBranchRequest(session_id=session.id, message_id=first_answer.id), metadata=mesh.md()
        ),
        C.FAILED_PRECONDITION,
    )
    if policy == apb.BUSY_POLICY_REJECT:
        await expect_status(
            _edit(mesh, session, first_user.id, "changed", busy_policy=policy), C.FAILED_PRECONDITION
        )
        rest = [r.event async for r in call]
        assert rest[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
        path = await _path(mesh, session)
        assert [m.content for m in path] == ["first", "Echo: first", LONG, f"Echo: {LONG}"]
        assert all(len(m.sibling_ids) == 1 for m in path)
        return
    run = await _edit(mesh, session, first_user.id, "changed", busy_policy=policy)
    rest = [r.event async for r in call]
    events = await _join(mesh, run.id)
    assert events[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    expected_first = (
        E.RUN_EVENT_TYPE_RUN_COMPLETED
        if policy == apb.BUSY_POLICY_ENQUEUE
        else E.RUN_EVENT_TYPE_RUN_CANCELLED
    )
    assert rest[-1].type == expected_first
    # The edit's branch is the active path; the live run's messages stayed on the old branch.
    path = await _path(mesh, session)
    assert [m.content for m in path] == ["changed", "Echo: changed"]
    assert list(path[0].sibling_ids) == [first_user.id, path[0].id]
    old_path = await _path(mesh, session, branch_message_id=first_user.id)
    old = [m.content for m in old_path]
    assert old[:3] == ["first", "Echo: first", LONG]
    if policy == apb.BUSY_POLICY_ENQUEUE:
        assert old[3] == f"Echo: {LONG}"
    elif policy == apb.BUSY_POLICY_INTERRUPT:  # the partial answer is kept, on its branch
        assert (
            len(old) == 4 and f"Echo: {LONG}".startswith(old[3]) and old_path[3].metadata["partial"] == "true"
        )
    else:  # ROLLBACK discards the partial answer
        assert len(old) == 3
    got = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=live_run), metadata=mesh.md())).run
    assert got.user_message_id == old_path[2].id


async def test_regenerate_a_tool_runs_answer(real_mesh: RealMesh) -> None:
    mesh = real_mesh
    session = await _session(mesh, model="echo:tools", tools=[_tool("lookup")])
    events = await _send(mesh, session.id, "find it")
    assert events[-1].type == E.RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED
    call_id = events[-1].tool_calls[0].id
    await mesh.stub.SubmitToolOutputs(
        pb.SubmitToolOutputsRequest(
            run_id=events[-1].run_id, outputs=[pb.ToolOutput(tool_call_id=call_id, output="42")]
        ),
        metadata=mesh.md(),
    )
    done = await _join(mesh, events[-1].run_id, events[-1].event_id)
    assert done[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    path = await _path(mesh, session)
    assert [m.role for m in path] == [USER, ASSISTANT, TOOL, ASSISTANT]
    # Regenerating the final answer answers the user's message again, from the first step.
    run = await _regenerate(mesh, session, path[3].id)
    events = await _join(mesh, run.id)
    assert events[-1].type == E.RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED
    paused = events[-1].event_id
    await mesh.stub.SubmitToolOutputs(
        pb.SubmitToolOutputsRequest(
            run_id=run.id, outputs=[pb.ToolOutput(tool_call_id=call_id, output="43")]
        ),
        metadata=mesh.md(),
    )
    assert (await _join(mesh, run.id, paused))[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED
    new_path = await _path(mesh, session)
    assert [m.role for m in new_path] == [USER, ASSISTANT, TOOL, ASSISTANT]
    assert new_path[0].id == path[0].id
    assert list(new_path[1].sibling_ids) == [path[1].id, new_path[1].id]
    assert "43" in new_path[3].content and "42" in path[3].content


async def test_cancel_an_edit_run_keeps_its_partial_answer_on_the_new_branch(make_real_mesh) -> None:
    mesh: RealMesh = await make_real_mesh(echo_delay=0.05)
    session = await _session(mesh)
    await _send(mesh, session.id, "short")
    user, answer = await _path(mesh, session)
    run = await _edit(mesh, session, user.id, LONG)
    call = mesh.stub.JoinRun(pb.JoinRunRequest(run_id=run.id), metadata=mesh.md())
    async for reply in call:
        if reply.event.type == E.RUN_EVENT_TYPE_MESSAGE_DELTA:
            break
    cancelled = (await mesh.stub.CancelRun(pb.CancelRunRequest(run_id=run.id), metadata=mesh.md())).run
    assert cancelled.state == pb.RUN_STATE_CANCELLED
    path = await _path(mesh, session)
    assert len(path) == 2 and path[0].content == LONG and path[1].metadata["partial"] == "true"
    assert f"Echo: {LONG}".startswith(path[1].content)
    assert list(path[0].sibling_ids) == [user.id, path[0].id]
    # The first exchange is untouched on its branch.
    old = await _path(mesh, session, branch_message_id=answer.id)
    assert [m.id for m in old] == [user.id, answer.id]


async def test_regenerate_asks_with_the_first_runs_model_override(real_mesh: RealMesh) -> None:
    mesh = real_mesh
    session = await _session(mesh, allow_model_override=True)
    events = await _send(mesh, session.id, "hi", model_override="echo:other")
    assert events[-1].model == "echo:other"
    _, answer = await _path(mesh, session)
    run = await _regenerate(mesh, session, answer.id)
    assert run.model_override == "echo:other"
    events = await _join(mesh, run.id)
    assert events[-1].type == E.RUN_EVENT_TYPE_RUN_COMPLETED and events[-1].model == "echo:other"
