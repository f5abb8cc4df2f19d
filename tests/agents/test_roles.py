"""Members read, owners and admins write, a service identity reads any tenant by id and never writes."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from agentmesh.agents.v1 import agents_service_pb2 as pb
from tests.agents.conftest import agent
from tests.helpers import expect_status


async def test_member_reads_but_cannot_write(serve, make_caller, tenant):
    running = await serve("agents")
    owner = make_caller(running.channel, tenant=tenant)
    admin = make_caller(running.channel, tenant=tenant, roles=("admin",), sub="adm")
    member = make_caller(running.channel, tenant=tenant, roles=("member",), sub="mem")
    a = (await admin.CreateAgent(pb.CreateAgentRequest(agent=agent("x")))).agent
    assert a.creator == "adm"
    assert (await member.GetAgent(pb.GetAgentRequest(agent_id=a.id))).agent == a
    assert len((await member.ListAgents(pb.ListAgentsRequest())).agents) == 1
    await member.ListAgentVersions(pb.ListAgentVersionsRequest(agent_id=a.id))
    await member.ValidateAgentConfig(pb.ValidateAgentConfigRequest(display_name="x", config=agent().config))
    await member.ListTemplates(pb.ListTemplatesRequest())
    writes = [
        member.CreateAgent(pb.CreateAgentRequest(agent=agent("m"))),
        member.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(id=a.id, display_name="m"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        ),
        member.DeleteAgent(pb.DeleteAgentRequest(agent_id=a.id)),
        member.ActivateAgent(pb.ActivateAgentRequest(agent_id=a.id)),
        member.DeactivateAgent(pb.DeactivateAgentRequest(agent_id=a.id)),
        member.RollbackAgent(pb.RollbackAgentRequest(agent_id=a.id, version=1)),
        member.CreateTemplate(
            pb.CreateTemplateRequest(template=pb.Template(display_name="t", config=agent().config))
        ),
        member.DeleteTemplate(pb.DeleteTemplateRequest(template_id="builtin-assistant")),
    ]
    for call in writes:
        await expect_status(call, grpc.StatusCode.PERMISSION_DENIED)
    assert (await owner.GetAgent(pb.GetAgentRequest(agent_id=a.id))).agent == a
    nobody = make_caller(running.channel, tenant=tenant, roles=())
    await expect_status(nobody.GetAgent(pb.GetAgentRequest(agent_id=a.id)), grpc.StatusCode.PERMISSION_DENIED)


async def test_service_identity_reads_any_tenant_by_id_and_never_writes(serve, make_caller, tenant):
    running = await serve("agents")
    owner = make_caller(running.channel, tenant=tenant)
    service = make_caller(running.channel, tenant="*", roles=("service",), sub="orchestration", tier="")
    a = (await owner.CreateAgent(pb.CreateAgentRequest(agent=agent("x")))).agent
    assert (await service.GetAgent(pb.GetAgentRequest(agent_id=a.id))).agent == a
    v1 = (await service.GetAgentVersion(pb.GetAgentVersionRequest(agent_id=a.id, version=1))).version
    assert v1.display_name == "x"
    await expect_status(service.GetAgent(pb.GetAgentRequest(agent_id="missing")), grpc.StatusCode.NOT_FOUND)
    for call in [
        service.CreateAgent(pb.CreateAgentRequest(agent=agent("s"))),
        service.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(id=a.id, display_name="s"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        ),
        service.DeleteAgent(pb.DeleteAgentRequest(agent_id=a.id)),
        service.DeactivateAgent(pb.DeactivateAgentRequest(agent_id=a.id)),
        service.RollbackAgent(pb.RollbackAgentRequest(agent_id=a.id, version=1)),
        service.CreateTemplate(
            pb.CreateTemplateRequest(template=pb.Template(display_name="t", config=agent().config))
        ),
    ]:
        await expect_status(call, grpc.StatusCode.PERMISSION_DENIED)
    # A service token that also claims owner is still read-only.
    both = make_caller(running.channel, tenant=tenant, roles=("service", "owner"))
    await expect_status(
        both.DeleteAgent(pb.DeleteAgentRequest(agent_id=a.id)), grpc.StatusCode.PERMISSION_DENIED
    )
    assert (await owner.GetAgent(pb.GetAgentRequest(agent_id=a.id))).agent == a
