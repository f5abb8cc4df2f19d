import grpc
from google.rpc import error_details_pb2

from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from services.platform.errors import status_proto_of
from tests.helpers import expect_status


async def test_another_tenants_session_and_run_are_not_found(make_mesh):
    mesh = await make_mesh()
    session = await mesh.session()
    events = await mesh.send(session.id, "hello")
    run_id = events[0].run_id
    other = mesh.md(tenant="tenant-other", sub="user-1", roles=("owner",))
    s = mesh.stub
    for call in (
        s.GetSession(pb.GetSessionRequest(session_id=session.id), metadata=other),
        s.EndSession(pb.EndSessionRequest(session_id=session.id), metadata=other),
        s.GetRun(pb.GetRunRequest(run_id=run_id), metadata=other),
        s.CancelRun(pb.CancelRunRequest(run_id=run_id), metadata=other),
        s.ListRuns(pb.ListRunsRequest(session_id=session.id), metadata=other),
    ):
        assert (await expect_status(call)).code() == grpc.StatusCode.NOT_FOUND
    for call in (
        s.SendMessage(pb.SendMessageRequest(session_id=session.id, text="x"), metadata=other),
        s.JoinRun(pb.JoinRunRequest(run_id=run_id), metadata=other),
    ):
        assert (await expect_status(call)).code() == grpc.StatusCode.NOT_FOUND
    listed = (await s.ListSessions(pb.ListSessionsRequest(), metadata=other)).sessions
    assert listed == []
    # Another member of the same tenant does not see it either; an admin of the tenant does.
    colleague = mesh.md(sub="user-2")
    assert (
        await expect_status(s.GetSession(pb.GetSessionRequest(session_id=session.id), metadata=colleague))
    ).code() == (grpc.StatusCode.NOT_FOUND)
    admin = mesh.md(sub="user-3", roles=("admin",))
    assert (
        await s.GetSession(pb.GetSessionRequest(session_id=session.id), metadata=admin)
    ).session.id == session.id
    mine = (await s.ListSessions(pb.ListSessionsRequest(), metadata=mesh.md())).sessions
    assert [x.id for x in mine] == [session.id]
    # Another tenant's agent cannot start a session either.
    agent_id = mesh.agents.add("tenant-other")
    assert (
        await expect_status(s.StartSession(pb.StartSessionRequest(agent_id=agent_id), metadata=mesh.md()))
    ).code() == (grpc.StatusCode.NOT_FOUND)


async def test_bad_input_is_invalid_argument_and_stores_nothing(make_mesh):
    mesh = await make_mesh()
    session = await mesh.session()
    s, md = mesh.stub, mesh.md()
    for text in ("", "   ", "x" * (32 * 1024 + 1)):
        err = await expect_status(
            s.SendMessage(pb.SendMessageRequest(session_id=session.id, text=text), metadata=md)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = status_proto_of(err).details
        assert any(d.Is(error_details_pb2.BadRequest.DESCRIPTOR) for d in details)
    err = await expect_status(
        s.SendMessage(pb.SendMessageRequest(session_id=session.id, text="hi", busy_policy=42), metadata=md)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for call in (
        s.StartSession(pb.StartSessionRequest(agent_id=""), metadata=md),
        s.StartSession(pb.StartSessionRequest(agent_id="a", title="t" * 300), metadata=md),
        s.GetSession(pb.GetSessionRequest(session_id=""), metadata=md),
        s.GetRun(pb.GetRunRequest(run_id=""), metadata=md),
        s.ListSessions(pb.ListSessionsRequest(page_size=-1), metadata=md),
        s.ListSessions(pb.ListSessionsRequest(page_token="garbage"), metadata=md),
    ):
        assert (await expect_status(call)).code() == grpc.StatusCode.INVALID_ARGUMENT
    # Unknown ids.
    assert (
        await expect_status(s.GetSession(pb.GetSessionRequest(session_id="nope"), metadata=md))
    ).code() == (grpc.StatusCode.NOT_FOUND)
    assert (await expect_status(s.CancelRun(pb.CancelRunRequest(run_id="nope"), metadata=md))).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    err = await expect_status(s.SendMessage(pb.SendMessageRequest(session_id="nope", text="hi"), metadata=md))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    events = [
        r.event
        async for r in s.SendMessage(pb.SendMessageRequest(session_id=session.id, text="ok"), metadata=md)
    ]
    err = await expect_status(
        s.JoinRun(pb.JoinRunRequest(run_id=events[0].run_id, after_event_id=-1), metadata=md)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing of the rejected requests was stored: one run, one user and one assistant message.
    runs = (await s.ListRuns(pb.ListRunsRequest(session_id=session.id), metadata=md)).runs
    assert len(runs) == 1
    conv = next(iter(mesh.conversation.conversations.values()))
    assert len(conv.messages) == 2
    # Unauthenticated without a token.
    assert (await expect_status(s.GetSession(pb.GetSessionRequest(session_id=session.id)))).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_list_sessions_and_runs_paginate(make_mesh):
    mesh = await make_mesh()
    sessions = [await mesh.session() for _ in range(3)]
    for _ in range(3):
        await mesh.send(sessions[0].id, "hi")
    seen, token = [], ""
    while True:
        page = await mesh.stub.ListSessions(
            pb.ListSessionsRequest(page_size=2, page_token=token), metadata=mesh.md()
        )
        seen += [s.id for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [s.id for s in reversed(sessions)]
    first = await mesh.stub.ListRuns(
        pb.ListRunsRequest(session_id=sessions[0].id, page_size=2), metadata=mesh.md()
    )
    second = await mesh.stub.ListRuns(
        pb.ListRunsRequest(session_id=sessions[0].id, page_size=2, page_token=first.next_page_token),
        metadata=mesh.md(),
    )
    assert len(first.runs) == 2 and len(second.runs) == 1 and not second.next_page_token
    assert all(r.state == pb.RUN_STATE_COMPLETED for r in [*first.runs, *second.runs])
