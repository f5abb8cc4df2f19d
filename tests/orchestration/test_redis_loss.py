"""Leases that survive Redis losing its keys: a FLUSHALL of the suite's own Redis under live runs on
two instances fails none of them (owners re-assert their leases; the sweeper waits for a grace
period and a stale heartbeat), and every answer is stored whole."""

import asyncio

from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from tests.helpers import flush_redis
from tests.orchestration.fakes import assistant_messages

T = pb.RunEventType
RUNS = 20


async def test_flushall_under_20_live_runs_on_two_instances_fails_none(make_mesh, flushable_redis_url):
    first = await make_mesh(echo_delay=0.02)
    second = await make_mesh(share=first, echo_delay=0.02)
    meshes = [first, second]
    texts = [" ".join(f"r{i}w{j}" for j in range(40)) for i in range(RUNS)]
    # 20 concurrent runs of one tenant: the enterprise tier allows them.
    md = first.md(tier="enterprise")
    agent_id = first.agents.add(first.tenant)
    sessions = [
        (
            await meshes[i % 2].stub.StartSession(pb.StartSessionRequest(agent_id=agent_id), metadata=md)
        ).session
        for i in range(RUNS)
    ]
    started = asyncio.Event()
    live = 0

    async def converse(i: int) -> list[pb.RunEvent]:
        nonlocal live
        mesh = meshes[i % 2]
        call = mesh.stub.SendMessage(
            pb.SendMessageRequest(session_id=sessions[i].id, text=texts[i]), metadata=md
        )
        seen: list[pb.RunEvent] = []
        async for reply in call:
            seen.append(reply.event)
            if reply.event.type == T.RUN_EVENT_TYPE_MESSAGE_DELTA and len(seen) == 3:
                live += 1
                if live == RUNS:
                    started.set()
            if i == 0 and len(seen) == 4:
                break  # this client goes away before the flush and resumes after it
        return seen

    tasks = [asyncio.create_task(converse(i)) for i in range(RUNS)]
    await asyncio.wait_for(started.wait(), 10)
    flush_redis(flushable_redis_url)
    # Past the lease TTL, the grace period and several sweeps: without re-assertion every run of
    # the other instance would have been failed by now.
    results = await asyncio.gather(*tasks)

    # The client that left before the flush resumes from the last event it saw, on the other instance.
    seen0 = results[0]
    rest = [
        r.event
        async for r in second.stub.JoinRun(
            pb.JoinRunRequest(run_id=seen0[0].run_id, after_event_id=seen0[-1].event_id), metadata=md
        )
    ]
    results[0] = seen0 + rest

    for i, events in enumerate(results):
        # Deltas written between a client's last read and the flush are gone with the stream; the
        # end events carry the whole answer.
        assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED, (i, events[-1])
        completed = [e for e in events if e.type == T.RUN_EVENT_TYPE_MESSAGE_COMPLETED]
        assert completed and completed[-1].final_message == "Echo: " + texts[i]
        ids = [e.event_id for e in events]
        assert ids == sorted(set(ids))
        run = (await first.stub.GetRun(pb.GetRunRequest(run_id=events[0].run_id), metadata=md)).run
        assert run.state == pb.RUN_STATE_COMPLETED
        assert run.last_event_id == ids[-1]
    stored = sorted(m.content for m in assistant_messages(first.conversation))
    assert stored == sorted("Echo: " + t for t in texts)

    # After the completion, JoinRun from 0 replays what the stream still holds, up to the end.
    again = [
        r.event
        async for r in second.stub.JoinRun(pb.JoinRunRequest(run_id=results[1][0].run_id), metadata=md)
    ]
    assert again[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    assert again[-1].event_id == results[1][-1].event_id
