import asyncio
import dataclasses

import grpc
import pytest

from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from tests.orchestration.conftest import FAST
from tests.orchestration.fakes import assistant_messages

T = pb.RunEventType


async def test_full_run_deltas_concatenate_to_the_stored_answer(make_mesh):
    mesh = await make_mesh()
    session = await mesh.session(system_prompt="be brief")
    events = await mesh.send(session.id, "hello there   world")
    types = [e.type for e in events]
    assert types[:2] == [T.RUN_EVENT_TYPE_RUN_CREATED, T.RUN_EVENT_TYPE_RUN_STARTED]
    assert types[-2:] == [T.RUN_EVENT_TYPE_MESSAGE_COMPLETED, T.RUN_EVENT_TYPE_RUN_COMPLETED]
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    deltas = "".join(e.text_delta for e in events if e.type == T.RUN_EVENT_TYPE_MESSAGE_DELTA)
    assert deltas == "Echo: hello there   world"
    assert events[-2].final_message == deltas
    stored = assistant_messages(mesh.conversation)
    assert [m.content for m in stored] == [deltas]
    assert stored[0].metadata["agent_version"] == "1"
    assert "partial" not in stored[0].metadata
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=events[0].run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_COMPLETED
    assert run.last_event_id == len(events)
    assert run.assistant_message_id == stored[0].id
    assert run.agent_version == 1
    # Every peer call carried the user's identity (tenant and user of the caller's token).
    assert {(t, u) for _, t, u in mesh.conversation.calls} == {(mesh.tenant, "user-1")}
    assert {m for m, _, _ in mesh.conversation.calls} >= {"CreateConversation", "AppendMessage", "GetContext"}


async def test_disconnect_then_join_resumes_without_gap_or_duplicate(make_mesh):
    mesh = await make_mesh(echo_delay=0.01)
    session = await mesh.session()
    text = " ".join(f"w{i}" for i in range(30))
    call = mesh.stub.SendMessage(pb.SendMessageRequest(session_id=session.id, text=text), metadata=mesh.md())
    seen = []
    async for reply in call:
        seen.append(reply.event)
        if len(seen) == 5:
            break
    call.cancel()  # the client goes away; the run goes on
    # Resume, possibly on another instance: everything after the last event seen.
    other = await make_mesh(share=mesh)
    rest = [
        r.event
        async for r in other.stub.JoinRun(
            pb.JoinRunRequest(run_id=seen[0].run_id, after_event_id=seen[-1].event_id), metadata=mesh.md()
        )
    ]
    ids = [e.event_id for e in seen + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    deltas = "".join(e.text_delta for e in seen + rest)
    assert deltas == "Echo: " + text
    # A finished run can be joined again within the retention window.
    again = [
        r.event async for r in mesh.stub.JoinRun(pb.JoinRunRequest(run_id=seen[0].run_id), metadata=mesh.md())
    ]
    assert [e.event_id for e in again] == ids
    # After an event past the finished run's end: its end (what a reader past the stored events
    # gets, test_hub.py), not an error.
    past = [
        r.event
        async for r in mesh.stub.JoinRun(
            pb.JoinRunRequest(run_id=seen[0].run_id, after_event_id=len(ids) + 1), metadata=mesh.md()
        )
    ]
    assert past == [rest[-1]]


async def test_cancel_stops_the_run_early_and_keeps_the_partial_answer(make_mesh):
    mesh = await make_mesh(echo_delay=0.05)
    session = await mesh.session()
    call = mesh.stub.SendMessage(
        pb.SendMessageRequest(session_id=session.id, text=" ".join(["word"] * 200)), metadata=mesh.md()
    )
    events = []
    async for reply in call:
        events.append(reply.event)
        if sum(e.type == T.RUN_EVENT_TYPE_MESSAGE_DELTA for e in events) == 3:
            break
    run_id = events[0].run_id
    run = (await mesh.stub.CancelRun(pb.CancelRunRequest(run_id=run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_CANCELLED
    async for reply in call:
        events.append(reply.event)
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_CANCELLED
    assert events[-1].error.code == "CANCELLED"
    partial = "".join(e.text_delta for e in events)
    stored = assistant_messages(mesh.conversation)
    assert [m.content for m in stored] == [partial]
    assert stored[0].metadata["partial"] == "true"
    assert len(partial.split()) < 100
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.stub.CancelRun(pb.CancelRunRequest(run_id=run_id), metadata=mesh.md())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_cancel_on_another_instance_reaches_the_run_between_lease_renewals(make_mesh):
    """CancelRun on an instance that does not run the run sets its cancel flag; the instance that
    runs it reads every local run's flag each poll interval (one read for all), so the run ends
    CANCELLED long before its next lease renewal would have carried the flag."""
    options = dataclasses.replace(FAST, lease_ttl_seconds=60.0, lease_renew_seconds=30.0)
    first = await make_mesh(echo_delay=0.05, options=options)
    second = await make_mesh(share=first, options=options)
    session = await first.session()
    call = first.stub.SendMessage(
        pb.SendMessageRequest(session_id=session.id, text=" ".join(["word"] * 200)), metadata=first.md()
    )
    events = []
    async for reply in call:
        events.append(reply.event)
        if reply.event.type == T.RUN_EVENT_TYPE_MESSAGE_DELTA:
            break
    run = (await second.stub.CancelRun(pb.CancelRunRequest(run_id=events[0].run_id), metadata=first.md())).run
    assert run.state == pb.RUN_STATE_CANCELLED
    async for reply in call:
        events.append(reply.event)
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_CANCELLED
    assert len("".join(e.text_delta for e in events).split()) < 100


async def test_instance_killed_mid_run_is_failed_after_its_lease(make_mesh):
    first = await make_mesh(echo_delay=0.05)
    session = await first.session()
    call = first.stub.SendMessage(
        pb.SendMessageRequest(session_id=session.id, text=" ".join(["word"] * 200)), metadata=first.md()
    )
    seen = []
    async for reply in call:
        seen.append(reply.event)
        if len(seen) == 4:
            break
    call.cancel()
    first.orch.runs.abandon()  # the worker dies without a word, as in a crash
    second = await make_mesh(share=first)
    rest = [
        r.event
        async for r in second.stub.JoinRun(
            pb.JoinRunRequest(run_id=seen[0].run_id, after_event_id=seen[-1].event_id), metadata=first.md()
        )
    ]
    assert rest[-1].type == T.RUN_EVENT_TYPE_RUN_FAILED
    assert rest[-1].error.code == "UNAVAILABLE"
    ids = [e.event_id for e in seen + rest]
    assert ids == list(range(1, len(ids) + 1))
    run = (await second.stub.GetRun(pb.GetRunRequest(run_id=seen[0].run_id), metadata=first.md())).run
    assert run.state == pb.RUN_STATE_FAILED
    got = (
        await second.stub.GetSession(pb.GetSessionRequest(session_id=session.id), metadata=first.md())
    ).session
    assert got.active_run_id == ""


async def test_config_update_between_messages_is_picked_up_via_watch(make_mesh):
    mesh = await make_mesh()
    agent_id = mesh.agents.add(mesh.tenant, max_output_tokens=2)
    session = await mesh.session(agent_id)
    first = await mesh.send(session.id, "one two three four")
    assert "".join(e.text_delta for e in first) == "Echo: one "
    assert first[-1].agent_version == 1
    gets = sum(1 for m, _ in mesh.agents.calls if m == "GetAgent")
    updates = mesh.orch.agents.updates
    version = mesh.agents.update(agent_id, max_output_tokens=3)
    await asyncio.wait_for(mesh.orch.agents.wait_for_update(updates), 5)
    second = await mesh.send(session.id, "one two three four")
    assert "".join(e.text_delta for e in second) == "Echo: one two "
    assert {e.agent_version for e in second if e.type != T.RUN_EVENT_TYPE_RUN_CREATED} == {version}
    # The new config came from the watch, not from another GetAgent.
    assert sum(1 for m, _ in mesh.agents.calls if m == "GetAgent") == gets
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=second[0].run_id), metadata=mesh.md())).run
    assert run.agent_version == version
    assert assistant_messages(mesh.conversation)[-1].metadata["agent_version"] == str(version)


async def test_inactive_agent_and_ended_session_are_failed_precondition(make_mesh):
    mesh = await make_mesh()
    inactive = mesh.agents.add(mesh.tenant, active=False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.stub.StartSession(pb.StartSessionRequest(agent_id=inactive), metadata=mesh.md())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    session = await mesh.session()
    ended = (
        await mesh.stub.EndSession(pb.EndSessionRequest(session_id=session.id), metadata=mesh.md())
    ).session
    assert ended.state == pb.SESSION_STATE_ENDED
    assert all(c.closed for c in mesh.conversation.conversations.values())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.send(session.id, "hello")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert assistant_messages(mesh.conversation) == []


async def test_a_client_gone_mid_admission_leaves_a_run_that_runs(make_mesh):
    """The client closes its stream after the run is stored but before its worker started (held
    here at the RUN_CREATED announcement): the admission finishes anyway, so the same request_id
    then gets a run that completes, not one left QUEUED until its lease lapses and it fails."""
    mesh = await make_mesh()
    session = await mesh.session()
    reached, release = asyncio.Event(), asyncio.Event()
    announce = mesh.orch._events.announce

    async def held(session_id: str, run_id: str) -> None:
        reached.set()
        await release.wait()
        await announce(session_id, run_id)

    mesh.orch._events.announce = held
    request = pb.SendMessageRequest(session_id=session.id, text="still here", request_id="gone-1")
    call = mesh.stub.SendMessage(request, metadata=mesh.md())
    reading = asyncio.ensure_future(call.read())
    await asyncio.wait_for(reached.wait(), 10)
    call.cancel()
    await asyncio.wait([reading])
    await asyncio.sleep(0.2)  # the server sees the cancel before the admission goes on
    release.set()
    events = [r.event async for r in mesh.stub.SendMessage(request, metadata=mesh.md())]
    assert events[0].type == T.RUN_EVENT_TYPE_RUN_CREATED
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED, events[-1]
