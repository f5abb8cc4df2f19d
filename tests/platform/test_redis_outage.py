"""A Redis outage seen by a unary call: shorter than AGENTMESH_REDIS_RETRY_SECONDS, the call waits
and succeeds (redis-py's retry with backoff); longer, it fails UNAVAILABLE saying so in words, not
INTERNAL and not a Python class name. The Redis is the test's own (killed and started again)."""

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agentmesh.agents.v1 import agents_service_pb2 as pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as pb_grpc
from tests.helpers import RedisServer, bearer, build_runtime, expect_status, free_port, start_server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, free_port())
    server.start()
    yield server
    server.close()


async def _agents(settings, keys, redis: RedisServer, retry_seconds: float):
    settings = dataclasses.replace(
        settings, redis_url=redis.url, redis_mode="standalone", redis_retry_seconds=retry_seconds
    )
    runtime = await build_runtime(settings, keys)
    running = await start_server(runtime, "agents")
    return runtime, running


async def test_an_outage_within_the_retry_window_is_ridden_through(settings, keys, own_redis):
    runtime, running = await _agents(settings, keys, own_redis, retry_seconds=8)
    stub = pb_grpc.AgentServiceStub(running.channel)
    md = bearer(keys.token(tenant="outage-a"))
    try:
        await stub.ListAgents(pb.ListAgentsRequest(), metadata=md)
        own_redis.kill()

        async def back_later() -> None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_redis.start)

        returning = asyncio.create_task(back_later())
        # Every call checks the token's revocation in Redis: this one waits for Redis to be back.
        await stub.ListAgents(pb.ListAgentsRequest(), metadata=md, timeout=10)
        await returning
    finally:
        await running.close()
        await runtime.close()


async def test_an_outage_past_the_retry_window_is_unavailable_in_words(settings, keys, own_redis):
    runtime, running = await _agents(settings, keys, own_redis, retry_seconds=0.5)
    stub = pb_grpc.AgentServiceStub(running.channel)
    md = bearer(keys.token(tenant="outage-b"))
    try:
        await stub.ListAgents(pb.ListAgentsRequest(), metadata=md)
        own_redis.kill()
        error = await expect_status(
            stub.ListAgents(pb.ListAgentsRequest(), metadata=md, timeout=10), grpc.StatusCode.UNAVAILABLE
        )
        assert error.details() == "Redis is unreachable; retry shortly"
    finally:
        await running.close()
        await runtime.close()
