"""Every RPC with another tenant's ids: NOT_FOUND, and nothing of the owner's agent changes."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from agentmesh.agents.v1 import agents_service_pb2 as pb
from tests.agents.conftest import agent
from tests.helpers import expect_status


async def test_another_tenants_ids_are_not_found(serve, make_caller, tenant):
    running = await serve("agents")
    owner = make_caller(running.channel, tenant=tenant)
    other = make_caller(running.channel, tenant=tenant + "-other", sub="user-b")
    a = (await owner.CreateAgent(pb.CreateAgentRequest(agent=agent("Mine")))).agent
    await owner.UpdateAgent(
        pb.UpdateAgentRequest(
            agent=pb.Agent(id=a.id, display_name="Mine v2"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    template = (
        await owner.CreateTemplate(
            pb.CreateTemplateRequest(template=pb.Template(display_name="T", config=agent().config))
        )
    ).template
    before = (await owner.GetAgent(pb.GetAgentRequest(agent_id=a.id))).agent
    versions_before = await owner.ListAgentVersions(pb.ListAgentVersionsRequest(agent_id=a.id))

    calls = {
        "GetAgent": other.GetAgent(pb.GetAgentRequest(agent_id=a.id)),
        "UpdateAgent": other.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(id=a.id, display_name="hijack"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        ),
        "DeleteAgent": other.DeleteAgent(pb.DeleteAgentRequest(agent_id=a.id)),
        "ActivateAgent": other.ActivateAgent(pb.ActivateAgentRequest(agent_id=a.id)),
        "DeactivateAgent": other.DeactivateAgent(pb.DeactivateAgentRequest(agent_id=a.id)),
        "ListAgentVersions": other.ListAgentVersions(pb.ListAgentVersionsRequest(agent_id=a.id)),
        "GetAgentVersion": other.GetAgentVersion(pb.GetAgentVersionRequest(agent_id=a.id, version=1)),
        "RollbackAgent": other.RollbackAgent(pb.RollbackAgentRequest(agent_id=a.id, version=1)),
        "DiffAgentVersions": other.DiffAgentVersions(
            pb.DiffAgentVersionsRequest(agent_id=a.id, from_version=1, to_version=2)
        ),
        "GetTemplate": other.GetTemplate(pb.GetTemplateRequest(template_id=template.id)),
        "DeleteTemplate": other.DeleteTemplate(pb.DeleteTemplateRequest(template_id=template.id)),
        "CreateAgent(template)": other.CreateAgent(
            pb.CreateAgentRequest(agent=pb.Agent(display_name="x"), template_id=template.id)
        ),
    }
    for name, call in calls.items():
        try:
            await expect_status(call, grpc.StatusCode.NOT_FOUND)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None

    # Lists and the tenant's templates show nothing of the owner's.
    assert list((await other.ListAgents(pb.ListAgentsRequest())).agents) == []
    assert all(t.builtin for t in (await other.ListTemplates(pb.ListTemplatesRequest())).templates)
    # Nothing of the owner's changed.
    assert (await owner.GetAgent(pb.GetAgentRequest(agent_id=a.id))).agent == before
    assert await owner.ListAgentVersions(pb.ListAgentVersionsRequest(agent_id=a.id)) == versions_before
    assert (await owner.GetTemplate(pb.GetTemplateRequest(template_id=template.id))).template == template
    # A request id is per tenant: the same id in another tenant creates that tenant's own agent.
    mine = (await owner.CreateAgent(pb.CreateAgentRequest(agent=agent("R"), request_id="same"))).agent
    theirs = (await other.CreateAgent(pb.CreateAgentRequest(agent=agent("R"), request_id="same"))).agent
    assert mine.id != theirs.id
