"""Concurrency on PostgreSQL: creates at the tier limit, updates with the same etag."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import field_mask_pb2

from agentmesh.agents.v1 import agents_service_pb2 as pb
from services.platform import errors
from tests.agents.conftest import agent


async def _outcomes(calls):
    results = await asyncio.gather(*calls, return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(f, grpc.aio.AioRpcError) for f in failed), failed
    return ok, failed


async def test_concurrent_creates_at_the_limit_let_exactly_one_through(serve, make_caller, tenant):
    running = await serve("agents")
    c = make_caller(running.channel, tenant=tenant, tier="free")  # free: 3 agents
    for i in range(2):
        await c.CreateAgent(pb.CreateAgentRequest(agent=agent(f"pre{i}")))
    ok, failed = await _outcomes(
        [c.CreateAgent(pb.CreateAgentRequest(agent=agent(f"race{i}"))) for i in range(8)]
    )
    assert len(ok) == 1 and len(failed) == 7
    for f in failed:
        assert f.code() == grpc.StatusCode.FAILED_PRECONDITION
        err = errors.from_rpc_error(f)
        assert isinstance(err, errors.QuotaExceeded) and err.violations[0].subject == "tenant"
    assert len((await c.ListAgents(pb.ListAgentsRequest())).agents) == 3
    # Delete gives the slot back.
    await c.DeleteAgent(pb.DeleteAgentRequest(agent_id=ok[0].agent.id))
    await c.CreateAgent(pb.CreateAgentRequest(agent=agent("after delete")))


async def test_concurrent_updates_with_the_same_etag_exactly_one_wins(serve, make_caller, tenant):
    running = await serve("agents")
    c = make_caller(running.channel, tenant=tenant)
    a = (await c.CreateAgent(pb.CreateAgentRequest(agent=agent("base")))).agent
    names = [f"writer{i}" for i in range(8)]
    ok, failed = await _outcomes(
        [
            c.UpdateAgent(
                pb.UpdateAgentRequest(
                    agent=pb.Agent(id=a.id, etag=a.etag, display_name=name),
                    update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                )
            )
            for name in names
        ]
    )
    assert len(ok) == 1 and all(f.code() == grpc.StatusCode.ABORTED for f in failed) and len(failed) == 7
    current = (await c.GetAgent(pb.GetAgentRequest(agent_id=a.id))).agent
    assert current.version == 2 and current.display_name == ok[0].agent.display_name
    versions = (await c.ListAgentVersions(pb.ListAgentVersionsRequest(agent_id=a.id))).versions
    assert [v.version for v in versions] == [2, 1]


async def test_concurrent_last_writer_updates_lose_nothing(serve, make_caller, tenant):
    running = await serve("agents")
    c = make_caller(running.channel, tenant=tenant)
    a = (await c.CreateAgent(pb.CreateAgentRequest(agent=agent("base")))).agent
    ok, failed = await _outcomes(
        [
            c.UpdateAgent(
                pb.UpdateAgentRequest(
                    agent=pb.Agent(id=a.id, description=f"d{i}"),
                    update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                )
            )
            for i in range(4)
        ]
    )
    # Every etag-less update that succeeded has its own version; none was silently overwritten.
    versions = (await c.ListAgentVersions(pb.ListAgentVersionsRequest(agent_id=a.id))).versions
    assert len(versions) == 1 + len(ok)
    assert sorted(r.agent.version for r in ok) == list(range(2, 2 + len(ok)))
    assert all(f.code() == grpc.StatusCode.ABORTED for f in failed)
