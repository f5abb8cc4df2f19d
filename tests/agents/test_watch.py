"""WatchAgents: a change made through one server instance reaches a watcher on another instance."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from google.protobuf import field_mask_pb2
from redis.asyncio.cluster import RedisCluster

from agentmesh.agents.v1 import agents_service_pb2 as pb
from services.agents.events import CHANNEL
from services.platform.redis_client import is_cluster
from tests.agents.conftest import agent
from tests.helpers import build_runtime, expect_status, start_server


@pytest.fixture
async def second_instance(settings, keys):
    """Another agents server with a runtime (engine, Redis client) of its own: a second process's view."""
    runtime = await build_runtime(settings, keys)
    running = await start_server(runtime, "agents")
    yield running.server, running.channel
    await running.close()
    await runtime.close()


async def _subscribed(runtime, *, channel: str | None = None) -> None:
    """Waits until Redis counts a subscriber (so the next publish reaches the watcher)."""
    # A cluster node counts only the subscriptions on its own connections: ask every node (summed).
    where = {"target_nodes": RedisCluster.ALL_NODES} if is_cluster(runtime.redis) else {}
    while True:
        if channel is None:
            if await runtime.redis.pubsub_numpat(**where) > 0:
                return
        elif dict(await runtime.redis.pubsub_numsub(channel, **where)).get(channel.encode(), 0) > 0:
            return
        await asyncio.sleep(0.02)


async def test_change_on_one_instance_reaches_a_watcher_on_another(
    serve, runtime, make_caller, tenant, second_instance
):
    first = await serve("agents")
    _, other_channel = second_instance
    writer = make_caller(first.channel, tenant=tenant)
    watcher = make_caller(other_channel, tenant=tenant, roles=("member",), sub="watcher")
    stream = watcher.WatchAgents(pb.WatchAgentsRequest())
    events = stream.__aiter__()
    pending = asyncio.ensure_future(events.__anext__())
    await _subscribed(runtime, channel=CHANNEL.format(tenant_id=tenant))

    created = (await writer.CreateAgent(pb.CreateAgentRequest(agent=agent("watched")))).agent
    event = (await pending).event
    assert event.change_type == pb.CHANGE_TYPE_CREATED and event.tenant_id == tenant
    assert event.agent == created and event.version == 1
    await writer.UpdateAgent(
        pb.UpdateAgentRequest(
            agent=pb.Agent(id=created.id, display_name="renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    event = (await events.__anext__()).event
    assert (
        event.change_type == pb.CHANGE_TYPE_UPDATED
        and event.agent.display_name == "renamed"
        and event.version == 2
    )
    # Another tenant's change does not reach this watcher; this tenant's delete does.
    other = make_caller(first.channel, tenant=tenant + "-x")
    await other.CreateAgent(pb.CreateAgentRequest(agent=agent("elsewhere")))
    await writer.DeleteAgent(pb.DeleteAgentRequest(agent_id=created.id))
    event = (await events.__anext__()).event
    assert event.change_type == pb.CHANGE_TYPE_DELETED and event.agent_id == created.id
    assert event.version == 3 and not event.HasField("agent")
    stream.cancel()


async def test_all_tenants_is_for_service_identities_and_ends_on_shutdown(
    serve, runtime, make_caller, tenant, second_instance
):
    first = await serve("agents")
    server, other_channel = second_instance
    owner = make_caller(other_channel, tenant=tenant)
    await expect_status(
        owner.WatchAgents(pb.WatchAgentsRequest(all_tenants=True)).read(), grpc.StatusCode.PERMISSION_DENIED
    )

    service = make_caller(other_channel, tenant="*", roles=("service",), sub="orchestration", tier="")
    stream = service.WatchAgents(pb.WatchAgentsRequest(all_tenants=True))
    pending = asyncio.ensure_future(stream.read())
    await _subscribed(runtime)
    writer = make_caller(first.channel, tenant=tenant + "-all")
    created = (await writer.CreateAgent(pb.CreateAgentRequest(agent=agent("any tenant")))).agent
    event = (await pending).event
    assert event.tenant_id == tenant + "-all" and event.agent_id == created.id

    # Shutdown: the watch ends by itself (status OK), well before the 30 s grace period is used up.
    stopping = asyncio.ensure_future(server.stop(30))
    assert await stream.read() == grpc.aio.EOF
    assert await stream.code() == grpc.StatusCode.OK
    await stopping
    with contextlib.suppress(Exception):
        stream.cancel()
