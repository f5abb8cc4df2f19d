"""Issue 17: renaming (UpdateSession) and deleting (DeleteSession) sessions, through orchestration on a
real server with the real conversation service on PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import field_mask_pb2

from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from tests.helpers import expect_status
from tests.orchestration.conftest import RealMesh

T = pb.RunEventType
C = grpc.StatusCode


async def _session(mesh: RealMesh, title: str = "first") -> pb.Session:
    agent_id = mesh.agents.add(mesh.tenant, model="echo:default")
    reply = await mesh.stub.StartSession(
        pb.StartSessionRequest(agent_id=agent_id, title=title), metadata=mesh.md()
    )
    return reply.session


def _rename(session_id: str, title: str, *paths: str) -> pb.UpdateSessionRequest:
    return pb.UpdateSessionRequest(
        session=pb.Session(id=session_id, title=title),
        update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
    )


async def test_rename_changes_the_session_and_its_conversation(real_mesh: RealMesh) -> None:
    session = await _session(real_mesh)
    assert session.title == "first"
    reply = await real_mesh.stub.UpdateSession(
        _rename(session.id, "Renamed", "title"), metadata=real_mesh.md()
    )
    assert reply.session.title == "Renamed"
    got = await real_mesh.stub.GetSession(
        pb.GetSessionRequest(session_id=session.id), metadata=real_mesh.md()
    )
    assert got.session.title == "Renamed"
    listed = await real_mesh.stub.ListSessions(pb.ListSessionsRequest(), metadata=real_mesh.md())
    assert [s.title for s in listed.sessions if s.id == session.id] == ["Renamed"]
    conv = await real_mesh.conv.GetConversation(
        cpb.GetConversationRequest(conversation_id=session.conversation_id), metadata=real_mesh.md()
    )
    assert conv.conversation.title == "Renamed"
    # "*" is every updatable field, the title alone.
    reply = await real_mesh.stub.UpdateSession(_rename(session.id, "", "*"), metadata=real_mesh.md())
    assert reply.session.title == ""


async def test_bad_renames_change_nothing(real_mesh: RealMesh) -> None:
    session = await _session(real_mesh)
    md = real_mesh.md()
    for request, field in (
        (_rename(session.id, "x"), "update_mask"),
        (_rename(session.id, "x", "agent_id"), "update_mask"),
        (_rename(session.id, "x" * 257, "title"), "session.title"),
    ):
        error = await expect_status(real_mesh.stub.UpdateSession(request, metadata=md), C.INVALID_ARGUMENT)
        assert field in (error.details() or "")
    await expect_status(
        real_mesh.stub.UpdateSession(_rename("", "x", "title"), metadata=md), C.INVALID_ARGUMENT
    )
    # Another tenant's session, and a member's session to another member, do not exist.
    for other in (real_mesh.md(tenant="tenant-other"), real_mesh.md(sub="user-2")):
        await expect_status(
            real_mesh.stub.UpdateSession(_rename(session.id, "stolen", "title"), metadata=other), C.NOT_FOUND
        )
    got = await real_mesh.stub.GetSession(pb.GetSessionRequest(session_id=session.id), metadata=md)
    assert got.session.title == "first"


async def test_delete_erases_the_session_its_conversation_and_runs(real_mesh: RealMesh) -> None:
    session = await _session(real_mesh)
    md = real_mesh.md()
    call = real_mesh.stub.SendMessage(
        pb.SendMessageRequest(session_id=session.id, text="hello there"), metadata=md
    )
    events = [r.event async for r in call]
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    run_id = events[-1].run_id
    usage_before = await real_mesh.conv.GetUsage(cpb.GetUsageRequest(), metadata=md)
    assert usage_before.totals.total_tokens > 0
    # Another tenant cannot delete it.
    await expect_status(
        real_mesh.stub.DeleteSession(
            pb.DeleteSessionRequest(session_id=session.id), metadata=real_mesh.md(tenant="t-x")
        ),
        C.NOT_FOUND,
    )
    await real_mesh.stub.DeleteSession(pb.DeleteSessionRequest(session_id=session.id), metadata=md)
    await expect_status(
        real_mesh.stub.GetSession(pb.GetSessionRequest(session_id=session.id), metadata=md), C.NOT_FOUND
    )
    await expect_status(real_mesh.stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=md), C.NOT_FOUND)
    await expect_status(real_mesh.stub.JoinRun(pb.JoinRunRequest(run_id=run_id), metadata=md), C.NOT_FOUND)
    await expect_status(
        real_mesh.conv.ListMessages(
            cpb.ListMessagesRequest(conversation_id=session.conversation_id), metadata=md
        ),
        C.NOT_FOUND,
    )
    listed = await real_mesh.stub.ListSessions(pb.ListSessionsRequest(), metadata=md)
    assert session.id not in [s.id for s in listed.sessions]
    # What the runs consumed was spent: the tenant's usage keeps it.
    usage_after = await real_mesh.conv.GetUsage(cpb.GetUsageRequest(), metadata=md)
    assert usage_after.totals.total_tokens == usage_before.totals.total_tokens
    # A second delete finds nothing.
    await expect_status(
        real_mesh.stub.DeleteSession(pb.DeleteSessionRequest(session_id=session.id), metadata=md), C.NOT_FOUND
    )


async def test_delete_cancels_a_live_run_and_keeps_nothing(make_real_mesh) -> None:
    mesh: RealMesh = await make_real_mesh(echo_delay=0.2)
    session = await _session(mesh)
    md = mesh.md()
    call = mesh.stub.SendMessage(
        pb.SendMessageRequest(session_id=session.id, text="one two three four five six seven eight nine ten"),
        metadata=md,
    )
    seen: list[pb.RunEvent] = []
    async for reply in call:
        seen.append(reply.event)
        if reply.event.type == T.RUN_EVENT_TYPE_MESSAGE_DELTA:
            break
    await mesh.stub.DeleteSession(pb.DeleteSessionRequest(session_id=session.id), metadata=md)
    rest = [r.event async for r in call]
    assert rest and rest[-1].type == T.RUN_EVENT_TYPE_RUN_CANCELLED
    await expect_status(mesh.stub.GetRun(pb.GetRunRequest(run_id=seen[0].run_id), metadata=md), C.NOT_FOUND)
    await asyncio.sleep(0.3)  # a worker that stored anything late would have done so by now
    await expect_status(
        mesh.conv.GetConversation(
            cpb.GetConversationRequest(conversation_id=session.conversation_id), metadata=md
        ),
        C.NOT_FOUND,
    )
