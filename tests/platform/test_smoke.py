import grpc
import pytest
from agentmesh.agents.v1 import agents_service_pb2 as pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import bearer


async def test_unauthenticated_without_token_and_unimplemented_with_one(serve, keys):
    running = await serve("agents")
    stub = pb_grpc.AgentServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetAgent(pb.GetAgentRequest(agent_id="x"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetAgent(pb.GetAgentRequest(agent_id="x"), metadata=bearer(keys.token()))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    health = health_pb2_grpc.HealthStub(running.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="agentmesh.agents.v1.AgentService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
