import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.agents.v1 import agents_service_pb2 as apb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from services.platform.errors import status_proto_of
from tests.orchestration.fakes import assistant_messages

T = pb.RunEventType
LONG = " ".join(["word"] * 200)


async def _start_long_run(mesh, session_id):
    """Starts a slow run and returns (call, its events so far) once it is streaming."""
    call = mesh.stub.SendMessage(pb.SendMessageRequest(session_id=session_id, text=LONG), metadata=mesh.md())
    events = []
    async for reply in call:
        events.append(reply.event)
        if reply.event.type == T.RUN_EVENT_TYPE_MESSAGE_DELTA:
            break
    return call, events


async def _rest(call, events):
    async for reply in call:
        events.append(reply.event)
    return events


async def test_reject_is_failed_precondition_and_changes_nothing(make_mesh):
    mesh = await make_mesh(echo_delay=0.02)
    session = await mesh.session()
    call, events = await _start_long_run(mesh, session.id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.send(session.id, "second", busy_policy=apb.BUSY_POLICY_REJECT)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    runs = (await mesh.stub.ListRuns(pb.ListRunsRequest(session_id=session.id), metadata=mesh.md())).runs
    assert len(runs) == 1
    await mesh.stub.CancelRun(pb.CancelRunRequest(run_id=events[0].run_id), metadata=mesh.md())
    await _rest(call, events)


async def test_agent_default_policy_enqueue_runs_after_the_current_one(make_mesh):
    mesh = await make_mesh(echo_delay=0.005)
    session = await mesh.session(busy_policy=apb.BUSY_POLICY_ENQUEUE)
    call = mesh.stub.SendMessage(
        pb.SendMessageRequest(session_id=session.id, text=" ".join(["a"] * 40)), metadata=mesh.md()
    )
    first_events = [(await anext(aiter(call))).event]  # accepted: RUN_CREATED
    second = await mesh.send(session.id, "second message")
    first_events = await _rest(call, first_events)
    assert first_events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    assert second[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    # The second run started only after the first ended.
    assert second[1].event_time.ToNanoseconds() >= first_events[-1].event_time.ToNanoseconds()
    contents = [m.content for m in assistant_messages(mesh.conversation)]
    assert contents == ["Echo: " + " ".join(["a"] * 40), "Echo: second message"]
    conv = next(iter(mesh.conversation.conversations.values()))
    assert [m.role for m in conv.messages] == [2, 3, 2, 3]  # user, assistant, user, assistant


async def test_interrupt_keeps_the_partial_answer_then_runs(make_mesh):
    mesh = await make_mesh(echo_delay=0.02)
    session = await mesh.session()
    call, events = await _start_long_run(mesh, session.id)
    second = await mesh.send(session.id, "now this", busy_policy=apb.BUSY_POLICY_INTERRUPT)
    first = await _rest(call, events)
    assert first[-1].type == T.RUN_EVENT_TYPE_RUN_CANCELLED
    assert second[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    stored = assistant_messages(mesh.conversation)
    partial = "".join(e.text_delta for e in first)
    assert [m.content for m in stored] == [partial, "Echo: now this"]
    assert stored[0].metadata["partial"] == "true"


async def test_rollback_discards_the_current_answer(make_mesh):
    mesh = await make_mesh(echo_delay=0.02)
    session = await mesh.session()
    call, events = await _start_long_run(mesh, session.id)
    second = await mesh.send(session.id, "instead", busy_policy=apb.BUSY_POLICY_ROLLBACK)
    first = await _rest(call, events)
    assert first[-1].type == T.RUN_EVENT_TYPE_RUN_CANCELLED
    assert first[-1].final_message == ""
    assert second[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    assert [m.content for m in assistant_messages(mesh.conversation)] == ["Echo: instead"]


async def test_concurrent_runs_limit_is_resource_exhausted_with_retry_info(make_mesh):
    mesh = await make_mesh(echo_delay=0.02)
    md = mesh.md(tier="free")  # two concurrent runs
    sessions = [await mesh.session() for _ in range(3)]
    calls = []
    for s in sessions[:2]:
        call = mesh.stub.SendMessage(pb.SendMessageRequest(session_id=s.id, text=LONG), metadata=md)
        await anext(aiter(call))
        calls.append(call)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.send(sessions[2].id, "one more", metadata=md)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = status_proto_of(err.value).details
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in details)
    for call in calls:
        call.cancel()
    await mesh.orch.runs.shutdown()


async def test_request_id_replay_joins_the_first_run(make_mesh):
    mesh = await make_mesh()
    session = await mesh.session()
    first = await mesh.send(session.id, "hi", request_id="req-1")
    again = await mesh.send(session.id, "hi", request_id="req-1")
    assert [e.event_id for e in again] == [e.event_id for e in first]
    assert {e.run_id for e in again} == {first[0].run_id}
    assert len(assistant_messages(mesh.conversation)) == 1


async def test_end_session_cancels_the_running_run_and_keeps_its_partial_answer(make_mesh):
    mesh = await make_mesh(echo_delay=0.02)
    session = await mesh.session()
    call = mesh.stub.SendMessage(pb.SendMessageRequest(session_id=session.id, text=LONG), metadata=mesh.md())
    stream = aiter(call)
    first = await anext(stream)
    seen = [first.event]
    while seen[-1].type != pb.RUN_EVENT_TYPE_MESSAGE_DELTA:  # the answer has begun
        seen.append((await anext(stream)).event)
    ended = await mesh.stub.EndSession(pb.EndSessionRequest(session_id=session.id), metadata=mesh.md())
    assert ended.session.state == pb.SESSION_STATE_ENDED
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=first.event.run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_CANCELLED
    events = seen + [r.event async for r in stream]
    assert events[-1].type == pb.RUN_EVENT_TYPE_RUN_CANCELLED
    stored = assistant_messages(mesh.conversation)
    assert len(stored) == 1 and stored[0].metadata["partial"] == "true"
    assert LONG.startswith(stored[0].content.removeprefix("Echo: ")) and stored[0].content != f"Echo: {LONG}"


async def test_requests_per_minute_is_resource_exhausted_until_the_next_window(runtime):
    from services.orchestration.limits import RunLimits
    from services.platform import errors
    from services.platform.tiers import TIERS

    now = [600.0 * 1000 + 10]  # 10 s into a minute
    limits = RunLimits(runtime.redis, slot_ttl_seconds=10, clock=lambda: now[0])
    free = TIERS["free"]
    tenant = f"rpm-{id(now)}"
    for _ in range(free.requests_per_minute):
        await limits.check_rate(tenant, free)
    with pytest.raises(errors.ResourceExhausted) as caught:
        await limits.check_rate(tenant, free)
    assert caught.value.retry_after == pytest.approx(50.0)
    assert caught.value.violations[0].subject == "requests_per_minute"
    now[0] += 50  # the next minute
    await limits.check_rate(tenant, free)
