"""Runs that ride through a Redis restart (issue 15): the test's own redis-server (no persistence) is
shut down (SHUTDOWN NOSAVE: every connection cut, every key gone) and started again on the same port
about half a second later, under 20 live paced runs on two instances. No run fails, no client stream
ends, every stored answer equals the deltas its client saw, and a resume afterwards is exact.

The same on a Redis Cluster of the test's own (issue 18): one of its three masters (the one REDIS_URL
names) is restarted the same way, down for two seconds (its slots unserved meanwhile, its keys gone,
CLUSTERDOWN from it until it has met the others again)."""

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from services.platform.settings import Settings
from tests.helpers import RedisCluster, RedisServer, free_port
from tests.orchestration.fakes import assistant_messages

T = pb.RunEventType
RUNS = 20


@dataclasses.dataclass
class OwnRedis:
    mode: str
    url: str
    restarted: RedisServer  # the server the test restarts
    down_seconds: float
    # At 20 ms a word, the answer outlasts the restart: it lands in the middle of every run.
    words: int


@pytest.fixture(params=["standalone", "cluster"])
def own_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server, or a three-master Redis Cluster, of this test alone (whatever the suite's
    mode: the test restarts it)."""
    if request.param == "standalone":
        server = RedisServer(tmp_path, free_port())
        server.start()
        yield OwnRedis("standalone", server.url, server, 0.5, words=60)
        server.close()
        return
    cluster = RedisCluster(tmp_path)
    try:
        cluster.start()
        yield OwnRedis("cluster", cluster.url, cluster.nodes[0], 2.0, words=200)
    finally:
        cluster.close()


@pytest.fixture
def settings(settings: Settings, own_redis: OwnRedis) -> Settings:
    return dataclasses.replace(settings, redis_url=own_redis.url, redis_mode=own_redis.mode)


async def test_redis_restart_under_20_live_runs_on_two_instances_fails_none(make_mesh, own_redis):
    first = await make_mesh(echo_delay=0.02)
    second = await make_mesh(share=first, echo_delay=0.02)
    meshes = [first, second]
    texts = [" ".join(f"r{i}w{j}" for j in range(own_redis.words)) for i in range(RUNS)]
    md = first.md(tier="enterprise")  # 20 concurrent runs of one tenant
    agent_id = first.agents.add(first.tenant)
    sessions = [
        (
            await meshes[i % 2].stub.StartSession(pb.StartSessionRequest(agent_id=agent_id), metadata=md)
        ).session
        for i in range(RUNS)
    ]
    started = asyncio.Event()
    live = 0
    restarted_at = 0.0
    after_restart: list[int] = [0] * RUNS  # the first event id each client received after the restart

    async def converse(i: int) -> list[pb.RunEvent]:
        nonlocal live
        call = meshes[i % 2].stub.SendMessage(
            pb.SendMessageRequest(session_id=sessions[i].id, text=texts[i]), metadata=md
        )
        seen: list[pb.RunEvent] = []
        async for reply in call:
            seen.append(reply.event)
            if restarted_at and not after_restart[i]:
                after_restart[i] = reply.event.event_id
            if len(seen) == 3:
                live += 1
                if live == RUNS:
                    started.set()
        return seen

    tasks = [asyncio.create_task(converse(i)) for i in range(RUNS)]
    await asyncio.wait_for(started.wait(), 15)
    down = await asyncio.to_thread(own_redis.restarted.restart, own_redis.down_seconds)
    restarted_at = time.monotonic()
    # A client stream that ended with an error raises here.
    results = await asyncio.gather(*tasks)
    assert down >= own_redis.down_seconds

    stored = {m.metadata["run_id"]: m.content for m in assistant_messages(first.conversation)}
    for i, events in enumerate(results):
        assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED, (i, events[-1])
        ids = [e.event_id for e in events]
        assert ids == list(range(1, len(ids) + 1)), (i, ids)  # no gap, no duplicate
        deltas = "".join(e.text_delta for e in events if e.type == T.RUN_EVENT_TYPE_MESSAGE_DELTA)
        run_id = events[0].run_id
        assert deltas == stored[run_id] == "Echo: " + texts[i], i
        run = (await meshes[1 - i % 2].stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=md)).run
        assert run.state == pb.RUN_STATE_COMPLETED and run.last_event_id == ids[-1]
        assert after_restart[i] and after_restart[i] < ids[-1], (i, after_restart[i])

        # Resume afterwards, on the other instance, from an event received after the restart:
        # exactly what followed it.
        cut = after_restart[i]
        rest = [
            r.event
            async for r in meshes[1 - i % 2].stub.JoinRun(
                pb.JoinRunRequest(run_id=run_id, after_event_id=cut), metadata=md
            )
        ]
        assert [(e.event_id, e.text_delta) for e in rest] == [
            (e.event_id, e.text_delta) for e in events if e.event_id > cut
        ], i
