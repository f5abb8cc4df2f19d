"""Calls to peers forward the caller's identity, request id and trace context, and carry a deadline:
the caller's remaining time, capped."""

import dataclasses

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration
from tests.helpers import bearer, build_runtime, start_server

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class Downstream(pb_grpc.IdentityServiceServicer):
    def __init__(self):
        self.seen: dict[str, object] = {}

    async def GetUser(self, request, context):
        self.seen = {k: v for k, v in context.invocation_metadata()}
        self.seen["time_remaining"] = context.time_remaining()
        return pb.GetUserResponse(user=pb.User(id=request.user_id))


class Upstream(pb_grpc.IdentityServiceServicer):
    def __init__(self, runtime: Runtime, address: str):
        self.stub = pb_grpc.IdentityServiceStub(runtime.peers.channel(address))

    async def WhoAmI(self, request, context):
        reply = await self.stub.GetUser(pb.GetUserRequest(user_id="through-peer"))
        return pb.WhoAmIResponse(user=reply.user)


def registration(servicer) -> ServiceRegistration:
    return ServiceRegistration(
        name="agentmesh.identity.v1.IdentityService",
        add_to_server=lambda server: pb_grpc.add_IdentityServiceServicer_to_server(servicer, server),
    )


@pytest.mark.parametrize("exporting", [True, False], ids=["tracing", "not-tracing"])
async def test_peer_call_forwards_identity_request_id_trace_and_deadline(settings, keys, exporting):
    """Tracing: the peer call is a child span of the caller's trace. Not tracing (no exporter, so no
    OpenTelemetry interceptors): the caller's traceparent is passed on unchanged."""
    settings = dataclasses.replace(settings, peers=dataclasses.replace(settings.peers, deadline_seconds=4.0))
    assert settings.otel_exporter == "none"
    runtime = await build_runtime(settings, keys, span_exporter=InMemorySpanExporter() if exporting else None)
    downstream = Downstream()
    down = await start_server(runtime, registration(downstream))
    up = await start_server(runtime, registration(Upstream(runtime, down.address)))
    stub = pb_grpc.IdentityServiceStub(up.channel)
    token = keys.token()
    try:
        traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
        metadata = (*bearer(token), ("x-request-id", "req-42"), ("traceparent", traceparent))
        reply = await stub.WhoAmI(pb.WhoAmIRequest(), metadata=metadata, timeout=30)
        assert reply.user.id == "through-peer"
        seen = downstream.seen
        assert seen["authorization"] == f"Bearer {token}"
        assert seen["x-request-id"] == "req-42"
        assert seen["traceparent"].split("-")[1] == TRACE_ID
        assert (seen["traceparent"] == traceparent) is not exporting  # a child span, or as it came
        assert 0 < seen["time_remaining"] < 4.5  # capped below the caller's 30 s

        await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token), timeout=1.5)
        assert downstream.seen["time_remaining"] < 2.0  # the caller's shorter deadline wins
    finally:
        await up.close()
        await down.close()
        await runtime.close()
