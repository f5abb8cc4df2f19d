"""Hypothesis-generated requests against every RPC of the four services (found through the
descriptors), as the owner of a real signed-up tenant, on one real server running all four.

Invariants, per generated call: the status is never INTERNAL, UNKNOWN, UNIMPLEMENTED or DATA_LOSS
(nor an error event carrying one); the server keeps answering (health SERVING after each call); and a
rejected call changes nothing stored (a digest of every table before and after it).

AGENTMESH_FUZZ_EXAMPLES (default 25) sets the examples per unary RPC; streams get a third of it.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentmesh.identity.v1 import identity_service_pb2 as id_pb
from tests.fuzz.descriptors import Outcome, Pools, Rpc, all_rpcs, call, message
from tests.fuzz.stack import Snapshots, Stack, World, changed, make_world
from tests.helpers import bearer

RPCS = all_rpcs()
EXAMPLES = int(os.environ.get("AGENTMESH_FUZZ_EXAMPLES", "25"))
FORBIDDEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
}
FORBIDDEN_NAMES = {c.name for c in FORBIDDEN}
FUZZ_SETTINGS = dict(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def world(stack: Stack) -> World:
    return make_world(stack, "fuzz")


def test_descriptors_find_every_service() -> None:
    services = {r.service for r in RPCS}
    assert services == {
        "agentmesh.identity.v1.IdentityService",
        "agentmesh.agents.v1.AgentService",
        "agentmesh.conversation.v1.ConversationService",
        "agentmesh.orchestration.v1.OrchestrationService",
    }
    assert len(RPCS) >= 50
    assert {r.short for r in RPCS if r.server_streaming} >= {
        "AgentService.WatchAgents",
        "OrchestrationService.SendMessage",
        "OrchestrationService.Chat",
        "OrchestrationService.JoinRun",
    }


def _error_codes(outcome: Outcome) -> list[str]:
    """Error codes carried inside stream messages (Chat answers a rejected message with a
    google.rpc.Status `status` and keeps the stream open)."""
    codes = []
    for reply in outcome.responses:
        if "status" in reply.DESCRIPTOR.fields_by_name and reply.HasField("status"):
            codes.extend(c.name for c in grpc.StatusCode if c.value[0] == reply.status.code)
    return codes


def _owner_token(stack: Stack, world: World) -> str:
    """The owner's token, renewed when a generated call (Logout, say) revoked it."""
    who = stack.stubs().identity
    try:
        who.WhoAmI(id_pb.WhoAmIRequest(), metadata=bearer(world.owner.access), timeout=10)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (e.code(), e.details())
        try:
            world.refreshed(world.owner)
        except grpc.RpcError:
            world.owner = world.login("owner")
    return world.owner.access


def _requests(rpc: Rpc, pools: Pools, data: st.DataObject) -> list[Any]:
    strategy = message(rpc.descriptor.input_type, pools)
    if rpc.client_streaming:
        return data.draw(st.lists(strategy, min_size=1, max_size=3), label="requests")
    return [data.draw(strategy, label="request")]


UNARY = [r for r in RPCS if not (r.client_streaming or r.server_streaming)]
STREAMING = [r for r in RPCS if r.client_streaming or r.server_streaming]


@pytest.mark.parametrize("rpc", UNARY, ids=lambda r: r.short)
@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
@given(data=st.data())
def test_unary(rpc: Rpc, stack: Stack, world: World, snapshots: Snapshots, data: st.DataObject) -> None:
    _check(rpc, stack, world, snapshots, data)


@pytest.mark.parametrize("rpc", STREAMING, ids=lambda r: r.short)
@settings(max_examples=max(3, EXAMPLES // 3), **FUZZ_SETTINGS)
@given(data=st.data())
def test_streaming(rpc: Rpc, stack: Stack, world: World, snapshots: Snapshots, data: st.DataObject) -> None:
    # Streams cost up to their read window each: fewer examples.
    _check(rpc, stack, world, snapshots, data)


def _check(rpc: Rpc, stack: Stack, world: World, snapshots: Snapshots, data: st.DataObject) -> None:
    pools = Pools(strings=sorted(world.ids.values()))
    requests = _requests(rpc, pools, data)
    token = _owner_token(stack, world)

    snapshots.settle()
    before = snapshots.take()
    outcome = call(stack.channel, rpc, requests, metadata=bearer(token), stream_timeout=0.5)

    assert outcome.code not in FORBIDDEN, f"{rpc.short} answered {outcome.code}: {outcome.details}"
    inner = [c for c in _error_codes(outcome) if c in FORBIDDEN_NAMES]
    assert not inner, f"{rpc.short} streamed error codes {inner}"
    if outcome.rejected and not outcome.responses:
        after = snapshots.take()
        assert not changed(before, after), (
            f"{rpc.short} was rejected ({outcome.code}: {outcome.details}) but changed "
            f"{changed(before, after)}"
        )
    health = health_pb2_grpc.HealthStub(stack.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
