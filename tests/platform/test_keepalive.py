"""The server takes its own clients' keepalive pings: peers and the gateway ping every 30 s, and a
server that allows one only every 5 minutes (gRPC's default) answers the third with GOAWAY
"too_many_pings", which ends every stream on the connection (WatchAgents reconnected every few
minutes; a quiet Chat through the gateway would end)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.platform.server import MIN_PING_INTERVAL_MS
from tests.helpers import build_runtime, start_server

# Faster than the peers' 30 s so the test takes seconds, and still no faster than the server allows.
PING_EVERY_MS = MIN_PING_INTERVAL_MS + 1_000


async def test_a_quiet_stream_outlives_its_clients_keepalive_pings(settings):
    runtime = await build_runtime(settings)
    running = await start_server(runtime, "agents")
    channel = grpc.aio.insecure_channel(running.address, options=[("grpc.keepalive_time_ms", PING_EVERY_MS)])
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        # Three pings and more without data: gRPC's default policy sends GOAWAY at the third.
        await asyncio.sleep(3.5 * PING_EVERY_MS / 1000)
        assert not watch.done(), await watch.code()
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    finally:
        await channel.close()
        await running.close()
        await runtime.close()
