"""Metrics count every call by method, tenant and code; logs are one JSON object per line with the
request id, tenant and trace id of the call they belong to."""

import asyncio
import json
import logging

import grpc
import pytest
from prometheus_client import generate_latest

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.platform.logs import JsonFormatter
from tests.helpers import bearer
from tests.platform.servicers import probe_identity


async def test_metrics_count_calls_by_method_tenant_and_code(serve, keys):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    token = keys.token(tenant="tenant-m")
    await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))
    await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetUser(pb.GetUserRequest(user_id="x"), metadata=bearer(token))
    # An aborted call's status reaches the client before the server's middleware unwinds: wait
    # (bounded) until no call is in flight before reading the counters.
    idle = 'agentmesh_rpc_active{method="/agentmesh.identity.v1.IdentityService/GetUser"} 0.0'
    for _ in range(100):
        text = generate_latest(running.server.metrics.registry).decode()
        if idle in text:
            break
        await asyncio.sleep(0.05)
    who = 'method="/agentmesh.identity.v1.IdentityService/WhoAmI",tenant="tenant-m"'
    assert f'agentmesh_rpc_calls_total{{code="OK",{who}}} 2.0' in text
    get = 'method="/agentmesh.identity.v1.IdentityService/GetUser",tenant="tenant-m"'
    assert f'agentmesh_rpc_calls_total{{code="NOT_FOUND",{get}}} 1.0' in text
    assert "agentmesh_rpc_duration_seconds_bucket" in text


async def test_access_log_is_json_with_request_id_tenant_and_the_callers_trace(serve, keys):
    """The runtime here exports no spans, so the trace id comes from the caller's traceparent."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)
            self.format(record)
            record.rendered = self.formatter.format(record)

    handler = Keep()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("agentmesh.rpc")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        running = await serve(probe_identity())
        stub = pb_grpc.IdentityServiceStub(running.channel)
        await stub.WhoAmI(
            pb.WhoAmIRequest(),
            metadata=(
                *bearer(keys.token(tenant="t-log")),
                ("x-request-id", "r-1"),
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ),
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(r.rendered) for r in records]
    line = next(entry for entry in lines if entry.get("method", "").endswith("/WhoAmI"))
    assert line["request_id"] == "r-1"
    assert line["tenant"] == "t-log"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert line["code"] == "OK"
    assert isinstance(line["duration_ms"], float)
