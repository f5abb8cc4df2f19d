"""Faults on purpose against production processes, each ending with "nothing acknowledged is lost"
checked directly in PostgreSQL.

The cluster of this module never touches the machine's shared PostgreSQL or Redis server: its
services reach PostgreSQL through a TcpProxy (tests/tcp_proxy.py) and Redis through another one, in
front of a `redis-server` this module starts on a port of its own. Restarting the machine's
PostgreSQL would break every other test running on it; stopping the proxy does to the services what a
restart does (every open connection cut, new ones refused until it is back), so that is how a
PostgreSQL restart is played. Redis is killed for real (SIGKILL to our own redis-server).

Each test first restarts whatever an earlier test stopped, so the tests do not depend on their order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from tests.helpers import RedisServer, bearer, free_port
from tests.system.clients import (
    PASSWORD,
    Stubs,
    agents_pb,
    conv_pb,
    echo_agent,
    identity_pb,
    orch_pb,
    sse_events,
)
from tests.system.cluster import Cluster
from tests.system.conftest import unique
from tests.system.faults import Load, ThreadedProxy, assert_nothing_lost, sync_url

# The proxies cut connections mid-handshake on purpose; a socket of theirs cut that way can be
# collected late, in whichever test runs then. Those sockets are the test's proxy's, not the services'.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BACKENDS = ("identity", "agents", "conversation", "orchestration", "orchestration-b")
_T = orch_pb.RunEventType
# Echo answers stream one word per 100 ms here, so a run is long enough to interrupt.
LONG_TEXT = " ".join(f"word{i}" for i in range(30))


@dataclasses.dataclass
class Faulty:
    cluster: Cluster
    redis: RedisServer
    redis_proxy: ThreadedProxy
    pg_proxy: ThreadedProxy
    pg_url: str


@pytest.fixture(scope="module")
def faulty(cluster_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    directory = tmp_path_factory.mktemp("faults")
    pg_url = cluster_pg_url
    redis = RedisServer(directory, free_port())
    redis.start()
    redis_proxy = ThreadedProxy("127.0.0.1", redis.port)
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    pg_host, pg_port = host_port.rsplit(":", 1)
    pg_proxy = ThreadedProxy(pg_host, int(pg_port))
    cluster = Cluster(
        directory,
        database_url=pg_url.replace(f"@{host_port}/", f"@127.0.0.1:{pg_proxy.port}/", 1),
        redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0",
        AGENTMESH_ECHO_DELAY_MS="100",
        # The orphaned run of the kill test is failed within about 6 s, not 15.
        AGENTMESH_RUN_LEASE_SECONDS="5",
        AGENTMESH_RUN_SWEEP_SECONDS="1",
    )
    for name in ("identity", "agents", "conversation", "orchestration", "gateway"):
        cluster.add(name)
    cluster.add("orchestration-b", "orchestration")
    try:
        cluster.start()
        yield Faulty(cluster, redis, redis_proxy, pg_proxy, pg_url)
        codes = cluster.close()
        assert all(code == 0 for code in codes.values()), codes
    finally:
        for proc in cluster.procs.values():
            if proc.alive and proc.popen is not None:
                proc.popen.kill()
        pg_proxy.close()
        redis_proxy.close()
        redis.close()


@pytest.fixture
async def stubs(faulty: Faulty) -> AsyncIterator[Stubs]:
    await asyncio.to_thread(faulty.cluster.ensure_running)
    names = ("identity", "agents", "conversation", "orchestration")
    channels = {n: grpc.aio.insecure_channel(faulty.cluster[n].address) for n in names}
    yield Stubs.on(channels)
    for channel in channels.values():
        await channel.close()


@dataclasses.dataclass
class Tenant:
    metadata: Any
    agent_id: str
    conversation_id: str


async def retry(method: Any, request: Any, **kwargs: Any) -> Any:
    """A unary call retried on UNAVAILABLE, as clients should: right after a dependency came back, a
    call can still meet a pooled connection that died with it."""
    for attempt in range(10):
        try:
            return await method(request, timeout=10, **kwargs)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 9:
                raise
            await asyncio.sleep(0.2)


async def enterprise_tenant(stubs: Stubs, pg_url: str) -> Tenant:
    """A new tenant on the enterprise tier (room for many agents), an agent and a conversation.
    The tier is the operator's: `agentmesh admin tenants set-tier` on the cluster's database."""
    name = unique("fault")
    signed = await retry(
        stubs.identity.SignUp,
        identity_pb.SignUpRequest(
            tenant_name=name, username="owner", password=PASSWORD, request_id=unique("signup")
        ),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_") and k != "REDIS_URL"}
    admin = [sys.executable, "-m", "services.cli", "admin", "tenants", "set-tier", name, "enterprise"]
    done = await asyncio.to_thread(
        subprocess.run, admin, env={**env, "DATABASE_URL": pg_url}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    refresh = identity_pb.RefreshTokenRequest(refresh_token=signed.tokens.refresh_token)
    md = bearer((await retry(stubs.identity.RefreshToken, refresh)).tokens.access_token)
    create = agents_pb.CreateAgentRequest(agent=echo_agent(), request_id=unique("agent"))
    agent = (await retry(stubs.agents.CreateAgent, create, metadata=md)).agent
    conversation = (
        await retry(
            stubs.conversation.CreateConversation,
            conv_pb.CreateConversationRequest(
                agent_id=agent.id, agent_version=agent.version, request_id=unique("conversation")
            ),
            metadata=md,
        )
    ).conversation
    return Tenant(md, agent.id, conversation.id)


async def wait_health(cluster: Cluster, names: tuple[str, ...], status: int, within: float = 30) -> None:
    """Until every named process reports `status` by itself (polled, bounded)."""

    def poll() -> None:
        deadline = time.monotonic() + within
        pending = set(names)
        while pending:
            pending = {n for n in pending if cluster.health(cluster[n]) != status}
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"health of {sorted(pending)} never became {status}")
            time.sleep(0.1)

    await asyncio.to_thread(poll)


def assert_clean(load: Load) -> None:
    assert load.errors == [], load.errors[:5]
    assert set(load.codes) <= {"OK", "UNAVAILABLE"}, load.codes


async def test_redis_killed_and_restarted_under_load(faulty: Faulty, stubs: Stubs) -> None:
    """Redis killed and back (empty) within AGENTMESH_REDIS_RETRY_SECONDS: health goes NOT_SERVING
    and back, and the calls in flight wait for Redis (redis-py's retry) instead of failing. Past the
    window a call fails UNAVAILABLE: tests/platform/test_redis_outage.py."""
    tenant = await enterprise_tenant(stubs, faulty.pg_url)
    load = Load(stubs, tenant.metadata, tenant.conversation_id)
    load.start()
    await load.until_ok(20)
    faulty.redis.kill()
    await wait_health(faulty.cluster, BACKENDS, NOT_SERVING)
    await asyncio.sleep(0.5)
    faulty.redis.start()  # same port, empty: what a crashed Redis without persistence comes back as
    await wait_health(faulty.cluster, BACKENDS, SERVING)
    await load.until_ok(20)
    await load.stop()
    assert_clean(load)
    assert load.codes["UNAVAILABLE"] == 0, load.codes
    assert_nothing_lost(faulty.pg_url, load)


async def test_postgresql_restarted_under_load(faulty: Faulty, stubs: Stubs) -> None:
    """PostgreSQL's restart, played by the proxy between the services and it (see the module doc)."""
    tenant = await enterprise_tenant(stubs, faulty.pg_url)
    load = Load(stubs, tenant.metadata, tenant.conversation_id)
    load.start()
    await load.until_ok(20)
    await asyncio.to_thread(faulty.pg_proxy.stop)
    await wait_health(faulty.cluster, BACKENDS, NOT_SERVING)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(faulty.pg_proxy.start)
    await wait_health(faulty.cluster, BACKENDS, SERVING)
    await load.until_ok(20)
    await load.stop()
    assert_clean(load)
    assert load.codes["UNAVAILABLE"] > 0, load.codes
    assert_nothing_lost(faulty.pg_url, load)


async def test_orchestration_killed_mid_stream(faulty: Faulty, stubs: Stubs) -> None:
    """SIGKILL to the instance running a streamed run: the client joins the run on the other instance
    and sees it end (RUN_FAILED once the dead instance's lease lapses); nothing stays running."""
    tenant = await enterprise_tenant(stubs, faulty.pg_url)
    start = orch_pb.StartSessionRequest(agent_id=tenant.agent_id, request_id=unique("session"))
    session = (await retry(stubs.orchestration.StartSession, start, metadata=tenant.metadata)).session
    stream = stubs.orchestration.SendMessage(
        orch_pb.SendMessageRequest(session_id=session.id, text=LONG_TEXT),
        metadata=tenant.metadata,
        timeout=60,
    )
    seen = []
    async for reply in stream:
        seen.append(reply.event)
        if sum(e.type == _T.RUN_EVENT_TYPE_MESSAGE_DELTA for e in seen) == 3:
            break
    await asyncio.to_thread(faulty.cluster.kill, "orchestration")
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        async for reply in stream:
            seen.append(reply.event)
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE

    run_id = seen[0].run_id
    async with grpc.aio.insecure_channel(faulty.cluster["orchestration-b"].address) as channel:
        other = Stubs.on({n: channel for n in ("identity", "agents", "conversation", "orchestration")})
        rest = [
            r.event
            async for r in other.orchestration.JoinRun(
                orch_pb.JoinRunRequest(run_id=run_id, after_event_id=seen[-1].event_id),
                metadata=tenant.metadata,
                timeout=60,
            )
        ]
    assert rest, "the run never ended"
    assert rest[-1].type in (_T.RUN_EVENT_TYPE_RUN_COMPLETED, _T.RUN_EVENT_TYPE_RUN_FAILED), rest[-1]
    if rest[0].event_id <= seen[-1].event_id:
        # The killed instance streamed events it had not stored yet (its readers get them before
        # Redis does): that tail is lost, and the run's end comes with the id its sweeper gave it.
        assert [e.type for e in rest] == [_T.RUN_EVENT_TYPE_RUN_FAILED], rest
    else:
        assert rest[0].event_id == seen[-1].event_id + 1

    with psycopg.connect(sync_url(faulty.pg_url)) as conn:
        live = conn.execute(
            "SELECT count(*) FROM runs WHERE session_id = %s AND state IN (1, 2)", (session.id,)
        ).fetchone()
        state = conn.execute("SELECT state FROM runs WHERE id = %s", (run_id,)).fetchone()
        stored = [
            r[0]
            for r in conn.execute(
                "SELECT content FROM messages WHERE conversation_id = %s", (session.conversation_id,)
            )
        ]
        active = conn.execute("SELECT active_run_id FROM sessions WHERE id = %s", (session.id,)).fetchone()
    assert live == (0,) and state in ((3,), (4,)), (live, state)
    assert active in ((None,), ("",)), active
    # The question was stored before the answer streamed (deltas were seen): it must be there.
    assert LONG_TEXT in stored


async def test_sigterm_drains_in_flight_calls_on_every_service(faulty: Faulty, stubs: Stubs) -> None:
    """SIGTERM while calls are in flight: each of them completes, then the process exits 0.
    The gateway and orchestration with a streamed answer (SSE) in flight; identity, agents and
    conversation with unary calls kept in flight by latency on their PostgreSQL connections."""
    cluster = faulty.cluster
    tenant = await enterprise_tenant(stubs, faulty.pg_url)
    start = orch_pb.StartSessionRequest(agent_id=tenant.agent_id, request_id=unique("session"))
    session = (await retry(stubs.orchestration.StartSession, start, metadata=tenant.metadata)).session
    events = []
    async with httpx.AsyncClient(base_url=cluster["gateway"].url, timeout=30) as http:
        async with http.stream(
            "POST",
            f"/v1/sessions/{session.id}:sendMessage",
            json={"text": LONG_TEXT},
            headers={**dict(tenant.metadata), "Accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 200
            async for _id, kind, data in sse_events(response):
                assert kind is None, data
                events.append(data)
                if data["type"] == "RUN_EVENT_TYPE_MESSAGE_DELTA" and len(events) == 3:
                    cluster.signal("gateway", signal.SIGTERM)
                    cluster.signal("orchestration", signal.SIGTERM)
    assert events[-1]["type"] == "RUN_EVENT_TYPE_RUN_COMPLETED", events[-1]
    assert "".join(e.get("textDelta", "") for e in events) == "Echo: " + LONG_TEXT
    assert await asyncio.to_thread(cluster.wait, "gateway") == 0
    assert await asyncio.to_thread(cluster.wait, "orchestration") == 0

    md = tenant.metadata
    faulty.pg_proxy.latency(0.2)
    try:
        calls = {
            "identity": stubs.identity.GetTenant(identity_pb.GetTenantRequest(), metadata=md, timeout=20),
            "agents": stubs.agents.GetAgent(agents_pb.GetAgentRequest(agent_id=tenant.agent_id), metadata=md),
            "conversation": stubs.conversation.AppendMessage(
                conv_pb.AppendMessageRequest(
                    conversation_id=tenant.conversation_id,
                    message=conv_pb.Message(role=conv_pb.MESSAGE_ROLE_USER, content="in flight at SIGTERM"),
                ),
                metadata=md,
                timeout=20,
            ),
        }
        await asyncio.sleep(0.3)
        assert not any(call.done() for call in calls.values()), "calls must still be in flight"
        for name in calls:
            cluster.signal(name, signal.SIGTERM)
        replies = {name: await call for name, call in calls.items()}
    finally:
        faulty.pg_proxy.latency(0)
    for name in calls:
        assert await asyncio.to_thread(cluster.wait, name) == 0, name
    assert replies["agents"].agent.id == tenant.agent_id
    message_id = replies["conversation"].message.id
    with psycopg.connect(sync_url(faulty.pg_url)) as conn:
        assert conn.execute("SELECT content FROM messages WHERE id = %s", (message_id,)).fetchone() == (
            "in flight at SIGTERM",
        )


async def test_slow_dependency_gives_deadlines_not_hangs(faulty: Faulty, stubs: Stubs) -> None:
    """PostgreSQL, then Redis, stall (the proxy holds every byte for an hour): calls with a deadline
    end with DEADLINE_EXCEEDED or UNAVAILABLE within it, through the gateway too; afterwards the
    proxy is bounced (cutting the stalled connections) and everything serves again."""
    tenant = await enterprise_tenant(stubs, faulty.pg_url)
    load = Load(stubs, tenant.metadata, tenant.conversation_id)
    load.start()
    await load.until_ok(10)
    await load.stop()
    gateway = faulty.cluster["gateway"]
    for proxy in (faulty.pg_proxy, faulty.redis_proxy):
        proxy.latency(3600)
        try:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stubs.conversation.AppendMessage(
                    conv_pb.AppendMessageRequest(
                        conversation_id=tenant.conversation_id,
                        message=conv_pb.Message(role=conv_pb.MESSAGE_ROLE_USER, content="stalled"),
                    ),
                    metadata=tenant.metadata,
                    timeout=1.5,
                )
            assert failed.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
            # Through two hops: the gateway's deadline reaches orchestration and its peers.
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
                reply = await http.get(
                    f"/v1/conversations/{tenant.conversation_id}/messages",
                    headers={**dict(tenant.metadata), "Grpc-Timeout": "1500m"},
                )
                listed = await http.get(
                    "/v1/sessions", headers={**dict(tenant.metadata), "Grpc-Timeout": "1500m"}
                )
            assert reply.status_code in (503, 504), reply.text
            assert listed.status_code in (503, 504), listed.text
            # Three calls of 1.5 s each: bounded by their deadlines, not by the hour-long stall.
            assert time.monotonic() - started < 20
        finally:
            proxy.latency(0)
            await asyncio.to_thread(proxy.stop)
            await asyncio.to_thread(proxy.start)
        await wait_health(faulty.cluster, BACKENDS, SERVING)
    load = Load(stubs, tenant.metadata, tenant.conversation_id, agents=load.agents, messages=load.messages)
    load.start()
    await load.until_ok(10)
    await load.stop()
    assert_clean(load)
    assert_nothing_lost(faulty.pg_url, load)


async def test_agent_cache_resyncs_after_redis_restart(faulty: Faulty, stubs: Stubs) -> None:
    """Orchestration's agent cache after Redis comes back empty: an agent updated after the restart
    is served in its new version within the watch's reconnect bound (backoff max, 30 s), never the
    cached old one past it."""
    tenant = await enterprise_tenant(stubs, faulty.pg_url)
    md = tenant.metadata
    start = orch_pb.StartSessionRequest(agent_id=tenant.agent_id)
    session = (await retry(stubs.orchestration.StartSession, start, metadata=md)).session

    failed_runs: list[str] = []

    async def versions() -> set[int]:
        """The agent versions a new run used (empty when it failed)."""
        call = stubs.orchestration.SendMessage(
            orch_pb.SendMessageRequest(session_id=session.id, text="which version"), metadata=md, timeout=20
        )
        events = [r.event async for r in call]
        if events[-1].type != orch_pb.RUN_EVENT_TYPE_RUN_COMPLETED:
            # Right after the restart a run can meet a pooled Redis connection that died with it
            # (seen: "internal error: ConnectionError"); that is not the cache's staleness.
            failed_runs.append(events[-1].error.message)
            return set()
        return {e.agent_version for e in events if e.type != orch_pb.RUN_EVENT_TYPE_RUN_CREATED}

    assert await versions() == {1}  # the agent is now in orchestration's cache
    faulty.redis.kill()
    await wait_health(faulty.cluster, BACKENDS, NOT_SERVING)
    faulty.redis.start()
    await wait_health(faulty.cluster, BACKENDS, SERVING)
    update = agents_pb.UpdateAgentRequest(
        agent=agents_pb.Agent(id=tenant.agent_id, description="after the restart"),
        update_mask={"paths": ["description"]},
    )
    assert (await retry(stubs.agents.UpdateAgent, update, metadata=md)).agent.version == 2
    deadline = time.monotonic() + 35
    seen: set[int] = set()
    while time.monotonic() < deadline:
        try:
            seen = await versions()
        except grpc.aio.AioRpcError as exc:
            # Right after the restart a call may still meet a pooled connection that died with Redis.
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            await asyncio.sleep(0.2)
            continue
        if seen == {2}:
            break
        await asyncio.sleep(0.5)
    assert seen == {2}, (seen, failed_runs)
    assert len(failed_runs) <= 2, failed_runs
