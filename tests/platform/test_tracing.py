"""One server span per RPC reaches the exporter, joined to the caller's trace when one was sent."""

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from tests.helpers import bearer, build_runtime, start_server
from tests.platform.servicers import probe_identity

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


async def test_one_span_per_rpc_with_the_callers_trace(settings, keys):
    exporter = InMemorySpanExporter()
    runtime = await build_runtime(settings, keys, span_exporter=exporter)
    running = await start_server(runtime, probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    try:
        traceparent = (("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN}-01"),)
        await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(keys.token()) + traceparent)
        await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(keys.token()))
    finally:
        await running.close()
        await runtime.close()
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in spans] == ["/agentmesh.identity.v1.IdentityService/WhoAmI"] * 2
    joined, fresh = spans
    assert format(joined.context.trace_id, "032x") == TRACE_ID
    assert format(joined.parent.span_id, "016x") == PARENT_SPAN
    assert format(fresh.context.trace_id, "032x") != TRACE_ID
    assert fresh.parent is None
