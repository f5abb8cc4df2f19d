"""SIGTERM during a server-streaming call: the call completes within the grace period; new calls
are refused from the moment the signal arrives."""

import asyncio
import os
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.agents.v1 import agents_service_pb2 as pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as pb_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_sigterm_drains_streams_and_refuses_new_calls(settings):
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "AGENTMESH_SHUTDOWN_GRACE_SECONDS": "10",
        "PYTHONPATH": ROOT,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.platform.drain_server", env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.AgentServiceStub(channel)
        stream = stub.WatchAgents(pb.WatchAgentsRequest())
        first = await stream.read()
        assert first.event.version == 1

        proc.send_signal(signal.SIGTERM)
        # Health turns NOT_SERVING first, then the server refuses new calls; poll until it does.
        fresh = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(fresh)
        refused = None
        for _ in range(50):
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError as err:
                refused = err.code()
                break
            await asyncio.sleep(0.1)
        assert refused in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        await fresh.close()

        versions = [first.event.version]
        while (reply := await stream.read()) is not grpc.aio.EOF:
            versions.append(reply.event.version)
        assert versions == list(range(1, 11)), "the in-flight stream was cut short"
        assert await stream.code() == grpc.StatusCode.OK
        await channel.close()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert (await proc.stdout.read()).strip() == b"drained"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
