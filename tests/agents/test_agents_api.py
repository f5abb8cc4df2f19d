"""AgentService on a real server, PostgreSQL and Redis: lifecycle, versions, templates, replay."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2, struct_pb2

from agentmesh.agents.v1 import agents_service_pb2 as pb
from services.platform import errors
from tests.agents.conftest import agent
from tests.helpers import expect_status


async def _caller(serve, make_caller, tenant, **kw):
    running = await serve("agents")
    return make_caller(running.channel, tenant=tenant, **kw)


async def test_create_get_list_update_delete(serve, make_caller, tenant):
    c = await _caller(serve, make_caller, tenant)
    created = (await c.CreateAgent(pb.CreateAgentRequest(agent=agent("One", temperature=0.5)))).agent
    assert created.version == 1 and created.etag == '"v1"' and created.state == pb.AGENT_STATE_ACTIVE
    assert created.creator == "user-a"
    assert (await c.GetAgent(pb.GetAgentRequest(agent_id=created.id))).agent == created

    update = pb.Agent(id=created.id, etag=created.etag, display_name="Renamed")
    update.config.system_prompt = "be brief"
    updated = (
        await c.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=update,
                update_mask=field_mask_pb2.FieldMask(paths=["display_name", "config.system_prompt"]),
            )
        )
    ).agent
    assert updated.version == 2 and updated.display_name == "Renamed"
    assert updated.config.system_prompt == "be brief"
    # Fields outside the mask are kept.
    assert updated.config.temperature == 0.5 and updated.config.model == "echo:default"

    # A stale etag is ABORTED and changes nothing.
    await expect_status(
        c.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(id=created.id, etag=created.etag, display_name="Stale"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    assert (await c.GetAgent(pb.GetAgentRequest(agent_id=created.id))).agent == updated

    # An empty etag is last-writer-wins; config.temperature in the mask but unset clears it.
    cleared = (
        await c.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(id=created.id),
                update_mask=field_mask_pb2.FieldMask(paths=["config.temperature"]),
            )
        )
    ).agent
    assert cleared.version == 3 and not cleared.config.HasField("temperature")

    deactivated = (await c.DeactivateAgent(pb.DeactivateAgentRequest(agent_id=created.id))).agent
    assert deactivated.state == pb.AGENT_STATE_INACTIVE and deactivated.version == 4
    # Already inactive: no new version.
    again = (await c.DeactivateAgent(pb.DeactivateAgentRequest(agent_id=created.id))).agent
    assert again.version == 4
    listed = await c.ListAgents(pb.ListAgentsRequest(state=pb.AGENT_STATE_ACTIVE))
    assert [a.id for a in listed.agents] == []
    listed = await c.ListAgents(pb.ListAgentsRequest(state=pb.AGENT_STATE_INACTIVE))
    assert [a.id for a in listed.agents] == [created.id]
    activated = (await c.ActivateAgent(pb.ActivateAgentRequest(agent_id=created.id, etag='"v4"'))).agent
    assert activated.state == pb.AGENT_STATE_ACTIVE and activated.version == 5

    await expect_status(
        c.DeleteAgent(pb.DeleteAgentRequest(agent_id=created.id, etag='"v1"')), grpc.StatusCode.ABORTED
    )
    await c.DeleteAgent(pb.DeleteAgentRequest(agent_id=created.id, etag='"v5"'))
    await expect_status(c.GetAgent(pb.GetAgentRequest(agent_id=created.id)), grpc.StatusCode.NOT_FOUND)
    assert list((await c.ListAgents(pb.ListAgentsRequest())).agents) == []
    await expect_status(c.DeleteAgent(pb.DeleteAgentRequest(agent_id=created.id)), grpc.StatusCode.NOT_FOUND)
    # Versions stay for audit, newest first, with who/what.
    versions = (await c.ListAgentVersions(pb.ListAgentVersionsRequest(agent_id=created.id))).versions
    assert [v.version for v in versions] == [6, 5, 4, 3, 2, 1]
    assert [v.change_type for v in versions] == [
        pb.CHANGE_TYPE_DELETED,
        pb.CHANGE_TYPE_ACTIVATED,
        pb.CHANGE_TYPE_DEACTIVATED,
        pb.CHANGE_TYPE_UPDATED,
        pb.CHANGE_TYPE_UPDATED,
        pb.CHANGE_TYPE_CREATED,
    ]
    assert list(versions[4].changed_fields) == ["display_name", "config.system_prompt"]
    assert list(versions[3].changed_fields) == ["config.temperature"]
    assert all(v.author == "user-a" for v in versions)


async def test_list_pagination_and_tokens(serve, make_caller, tenant):
    c = await _caller(serve, make_caller, tenant)
    ids = [(await c.CreateAgent(pb.CreateAgentRequest(agent=agent(f"A{i}")))).agent.id for i in range(5)]
    seen, token = [], ""
    while True:
        page = await c.ListAgents(pb.ListAgentsRequest(page_size=2, page_token=token))
        seen += [a.id for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    first = await c.ListAgents(pb.ListAgentsRequest(page_size=2))
    tampered = first.next_page_token[:-2] + ("AA" if first.next_page_token[-2:] != "AA" else "BB")
    err = errors.from_rpc_error(
        await expect_status(
            c.ListAgents(pb.ListAgentsRequest(page_token=tampered)), grpc.StatusCode.INVALID_ARGUMENT
        )
    )
    assert [v.field for v in err.violations] == ["page_token"]
    await expect_status(
        c.ListAgents(pb.ListAgentsRequest(page_token="not a token!")), grpc.StatusCode.INVALID_ARGUMENT
    )
    # A token is bound to its filter.
    await expect_status(
        c.ListAgents(pb.ListAgentsRequest(page_token=first.next_page_token, state=pb.AGENT_STATE_ACTIVE)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(c.ListAgents(pb.ListAgentsRequest(page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT)


async def test_request_id_replay(serve, make_caller, tenant):
    c = await _caller(serve, make_caller, tenant)
    first = (await c.CreateAgent(pb.CreateAgentRequest(agent=agent("Once"), request_id="req-1"))).agent
    again = (await c.CreateAgent(pb.CreateAgentRequest(agent=agent("Twice"), request_id="req-1"))).agent
    assert again == first
    assert len((await c.ListAgents(pb.ListAgentsRequest())).agents) == 1
    t1 = (
        await c.CreateTemplate(
            pb.CreateTemplateRequest(
                template=pb.Template(display_name="T", config=agent().config), request_id="r"
            )
        )
    ).template
    t2 = (
        await c.CreateTemplate(
            pb.CreateTemplateRequest(
                template=pb.Template(display_name="T2", config=agent().config), request_id="r"
            )
        )
    ).template
    assert t1 == t2


async def test_rollback_and_diff(serve, make_caller, tenant):
    c = await _caller(serve, make_caller, tenant)
    a = (await c.CreateAgent(pb.CreateAgentRequest(agent=agent("V1", temperature=0.2)))).agent
    change = pb.Agent(
        id=a.id, display_name="V2", config=pb.AgentConfig(model="openai:gpt-4o-mini", temperature=1.5)
    )
    change.config.tools.add(name="search")
    b = (
        await c.UpdateAgent(
            pb.UpdateAgentRequest(agent=change, update_mask=field_mask_pb2.FieldMask(paths=["*"]))
        )
    ).agent
    assert b.version == 2 and b.config.model == "openai:gpt-4o-mini"
    diff = (
        await c.DiffAgentVersions(pb.DiffAgentVersionsRequest(agent_id=a.id, from_version=1, to_version=2))
    ).diffs
    by_path = {d.path: d for d in diff}
    assert set(by_path) == {"display_name", "config.model", "config.temperature", "config.tools"}
    assert by_path["config.temperature"].old_value.number_value == 0.2
    assert by_path["config.temperature"].new_value.number_value == 1.5
    assert by_path["config.tools"].old_value.WhichOneof("kind") == "null_value"
    assert by_path["config.tools"].new_value.list_value.values[0].struct_value["name"] == "search"

    rolled = (await c.RollbackAgent(pb.RollbackAgentRequest(agent_id=a.id, version=1, etag=b.etag))).agent
    assert rolled.version == 3 and rolled.display_name == "V1" and rolled.config == a.config
    v3 = (await c.GetAgentVersion(pb.GetAgentVersionRequest(agent_id=a.id, version=3))).version
    assert v3.change_type == pb.CHANGE_TYPE_ROLLED_BACK and v3.source_version == 1
    assert (
        list(
            (
                await c.DiffAgentVersions(
                    pb.DiffAgentVersionsRequest(agent_id=a.id, from_version=1, to_version=3)
                )
            ).diffs
        )
        == []
    )
    await expect_status(
        c.RollbackAgent(pb.RollbackAgentRequest(agent_id=a.id, version=9)), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(
        c.RollbackAgent(pb.RollbackAgentRequest(agent_id=a.id, version=1, etag=b.etag)),
        grpc.StatusCode.ABORTED,
    )
    await expect_status(
        c.DiffAgentVersions(pb.DiffAgentVersionsRequest(agent_id=a.id, from_version=0, to_version=2)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_versions_are_immutable(serve, make_caller, tenant):
    c = await _caller(serve, make_caller, tenant)
    a = (await c.CreateAgent(pb.CreateAgentRequest(agent=agent("Frozen", system_prompt="p1")))).agent
    v1 = (await c.GetAgentVersion(pb.GetAgentVersionRequest(agent_id=a.id, version=1))).version
    for prompt in ("p2", "p3"):
        await c.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(id=a.id, config=pb.AgentConfig(system_prompt=prompt)),
                update_mask=field_mask_pb2.FieldMask(paths=["config.system_prompt"]),
            )
        )
    await c.RollbackAgent(pb.RollbackAgentRequest(agent_id=a.id, version=2))
    assert (await c.GetAgentVersion(pb.GetAgentVersionRequest(agent_id=a.id, version=1))).version == v1
    v2 = (await c.GetAgentVersion(pb.GetAgentVersionRequest(agent_id=a.id, version=2))).version
    assert v2.config.system_prompt == "p2"
    assert (await c.GetAgent(pb.GetAgentRequest(agent_id=a.id))).agent.config.system_prompt == "p2"


async def test_templates(serve, make_caller, tenant):
    c = await _caller(serve, make_caller, tenant)
    listed = (await c.ListTemplates(pb.ListTemplatesRequest())).templates
    builtin = [t for t in listed if t.builtin]
    assert len(builtin) >= 3 and all(t.config.model == "echo:default" for t in builtin)
    assistant = (await c.GetTemplate(pb.GetTemplateRequest(template_id="builtin-assistant"))).template
    await expect_status(
        c.DeleteTemplate(pb.DeleteTemplateRequest(template_id="builtin-assistant")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    # From a template: its config is the base, fields set on agent.config win.
    made = (
        await c.CreateAgent(
            pb.CreateAgentRequest(
                agent=pb.Agent(display_name="From template", config=pb.AgentConfig(temperature=1.1)),
                template_id="builtin-assistant",
            )
        )
    ).agent
    assert made.template_id == "builtin-assistant"
    assert made.config.system_prompt == assistant.config.system_prompt and made.config.temperature == 1.1

    params = struct_pb2.Struct()
    params.update({"type": "object", "properties": {"q": {"type": "string"}}})
    own = pb.Template(
        display_name="Mine",
        config=pb.AgentConfig(model="echo:x", tools=[pb.Tool(name="q", parameters=params)]),
    )
    created = (await c.CreateTemplate(pb.CreateTemplateRequest(template=own))).template
    assert created.id.startswith("tpl-") and not created.builtin
    pages, token = [], ""
    while True:
        page = await c.ListTemplates(pb.ListTemplatesRequest(page_size=2, page_token=token))
        pages += [t.id for t in page.templates]
        token = page.next_page_token
        if not token:
            break
    assert pages == [*sorted(t.id for t in builtin), created.id]
    from_own = (
        await c.CreateAgent(pb.CreateAgentRequest(agent=pb.Agent(display_name="x"), template_id=created.id))
    ).agent
    assert from_own.config.tools[0].name == "q"
    await c.DeleteTemplate(pb.DeleteTemplateRequest(template_id=created.id))
    await expect_status(
        c.GetTemplate(pb.GetTemplateRequest(template_id=created.id)), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(
        c.CreateAgent(pb.CreateAgentRequest(agent=pb.Agent(display_name="x"), template_id=created.id)),
        grpc.StatusCode.NOT_FOUND,
    )
