"""The GetAgent cache: a change made on another instance reaches this instance's reads (through the
change events), and a read racing with an eviction never puts a stale agent back."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf import field_mask_pb2

from agentmesh.agents.v1 import agents_service_pb2 as pb
from services.agents.cache import CachedStore
from services.agents.models import Agent
from tests.agents.conftest import agent
from tests.agents.test_watch import second_instance  # noqa: F401  (fixture)
from tests.fakes.agents import FakeStore


async def test_a_change_on_another_instance_reaches_cached_reads(serve, make_caller, tenant, second_instance):  # noqa: F811
    first = await serve("agents")
    _, other_channel = second_instance
    reader = make_caller(first.channel, tenant=tenant)
    writer = make_caller(other_channel, tenant=tenant)
    created = (await writer.CreateAgent(pb.CreateAgentRequest(agent=agent("before")))).agent
    # Warm the reader's cache (it goes live once its event subscription holds).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert (await reader.GetAgent(pb.GetAgentRequest(agent_id=created.id))).agent.display_name == "before"
        cache = (
            next(r for r in first.server.registrations if r.name.endswith("AgentService"))
            .background[0]
            .__self__
        )
        if cache.live and created.id in cache._agents:
            break
        await asyncio.sleep(0.05)
    assert cache.live and created.id in cache._agents

    await writer.UpdateAgent(
        pb.UpdateAgentRequest(
            agent=pb.Agent(id=created.id, display_name="after"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen = (await reader.GetAgent(pb.GetAgentRequest(agent_id=created.id))).agent
        if seen.display_name == "after":
            break
        await asyncio.sleep(0.02)
    assert (seen.display_name, seen.version) == ("after", 2)

    # Another tenant still gets NOT_FOUND for a cached agent.
    stranger = make_caller(first.channel, tenant=tenant + "-other")
    try:
        await stranger.GetAgent(pb.GetAgentRequest(agent_id=created.id))
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("another tenant read a cached agent")


async def test_a_read_racing_an_eviction_does_not_refill_with_the_old_agent():
    store = FakeStore()
    stale = store.agents["a-1"] = Agent(
        id="a-1",
        tenant_id="t",
        display_name="A",
        description="",
        state="ACTIVE",
        config={},
        version=1,
        creator="u",
        template_id="",
        create_time_us=1,
        update_time_us=1,
    )
    store.hold = asyncio.Event()
    cache = CachedStore(store, events=None)
    cache.live = True
    read = asyncio.ensure_future(cache.get_agent("t", "a-1"))
    await asyncio.sleep(0)
    cache._evict("a-1")  # a change event arrives while the read is in flight
    store.hold.set()
    assert (await read) is stale  # the caller gets what the database said then...
    assert "a-1" not in cache._agents  # ...but the cache does not keep it
