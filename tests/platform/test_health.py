"""Health follows the dependencies: SERVING with PostgreSQL and Redis up, NOT_SERVING within a few
seconds of either becoming unreachable, SERVING again by itself when it returns."""

import asyncio
import dataclasses
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import build_runtime, start_server
from tests.tcp_proxy import TcpProxy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def wait_for(stub, service: str, wanted: int, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        if reply.status == wanted:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"{service or 'server'} did not become {wanted} within {within}s")


@pytest.mark.parametrize("dependency", ["redis", "database"])
async def test_health_follows_dependency(settings, dependency):
    target = urlsplit(settings.redis_url if dependency == "redis" else settings.database_url)
    proxy = TcpProxy(target.hostname, target.port)
    port = await proxy.start()
    if dependency == "redis":
        settings = dataclasses.replace(settings, redis_url=via(settings.redis_url, port))
    else:
        settings = dataclasses.replace(settings, database_url=via(settings.database_url, port))
    runtime = await build_runtime(settings)
    running = await start_server(runtime, "agents")
    stub = health_pb2_grpc.HealthStub(running.channel)
    try:
        for service in ("", "agentmesh.agents.v1.AgentService"):
            await wait_for(stub, service, SERVING, within=5)
        await proxy.stop()
        await wait_for(stub, "agentmesh.agents.v1.AgentService", NOT_SERVING, within=8)
        await wait_for(stub, "", NOT_SERVING, within=2)
        await proxy.start()  # same port: the dependency is back
        await wait_for(stub, "agentmesh.agents.v1.AgentService", SERVING, within=15)
    finally:
        await proxy.stop()
        await running.close()
        await runtime.close()


async def test_health_watch_streams_each_change(settings):
    """Health.Watch writes with context.write (grpc's servicer), through the relay's stand-in
    context: it answered INTERNAL before that could write."""
    runtime = await build_runtime(settings)
    running = await start_server(runtime, "agents")
    stub = health_pb2_grpc.HealthStub(running.channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="agentmesh.agents.v1.AgentService"))
    try:
        assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
        await running.server.health_servicer.set("agentmesh.agents.v1.AgentService", NOT_SERVING)
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
    finally:
        watch.cancel()
        await running.close()
        await runtime.close()
