"""Tools over the wire: every field through CreateAgent, GetAgent and the versions (real gRPC server,
PostgreSQL, Redis), AGENTMESH_TOOL_ALLOWED_HOSTS taken from the settings, and a config stored before
tools had an execution read as CLIENT."""

from __future__ import annotations

import dataclasses

import grpc
from google.protobuf import struct_pb2

from agentmesh.agents.v1 import agents_service_pb2 as pb
from services import agents
from services.platform import errors
from services.platform.auth import Principal
from services.platform.settings import ToolSettings
from tests.agents.conftest import agent
from tests.helpers import expect_status


async def test_tool_fields_round_trip_and_bad_ones_are_rejected(serve, runtime, make_caller, tenant):
    runtime.settings = dataclasses.replace(
        runtime.settings, tools=ToolSettings(allowed_hosts=("tools.internal",))
    )
    built = await agents.build(runtime)
    running = await serve(built.registration)
    c = make_caller(running.channel, tenant=tenant)

    params = struct_pb2.Struct()
    params.update({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})
    http = pb.Tool(
        name="search",
        description="Searches the catalogue.",
        parameters=params,
        execution=pb.TOOL_EXECUTION_HTTP,
        url="http://tools.internal/search",
        timeout_ms=20_000,
        requires_approval=True,
    )
    client = pb.Tool(name="open_page", description="Opens a page in the user's browser.")
    made = (await c.CreateAgent(pb.CreateAgentRequest(agent=agent(tools=[http, client])))).agent
    as_read = [
        http,
        pb.Tool(name=client.name, description=client.description, execution=pb.TOOL_EXECUTION_CLIENT),
    ]
    assert list(made.config.tools) == as_read
    got = (await c.GetAgent(pb.GetAgentRequest(agent_id=made.id))).agent
    assert list(got.config.tools) == as_read

    # Dropping the approval is a new version; both versions keep every field.
    changed = pb.Tool()
    changed.CopyFrom(http)
    changed.requires_approval = False
    update = pb.Agent(id=made.id, config=pb.AgentConfig(tools=[changed, client]))
    await c.UpdateAgent(pb.UpdateAgentRequest(agent=update, update_mask={"paths": ["config.tools"]}))
    v1 = (await c.GetAgentVersion(pb.GetAgentVersionRequest(agent_id=made.id, version=1))).version
    assert list(v1.config.tools) == as_read
    versions = (await c.ListAgentVersions(pb.ListAgentVersionsRequest(agent_id=made.id))).versions
    assert [v.version for v in versions] == [2, 1]
    assert (
        not versions[0].config.tools[0].requires_approval and versions[0].config.tools[0].timeout_ms == 20_000
    )
    assert list(versions[0].changed_fields) == ["config.tools"]

    # Plain http off the allow list, and an execution number this contract does not name.
    bad = [
        pb.Tool(name="a", execution=pb.TOOL_EXECUTION_HTTP, url="http://tools.example.com/a"),
        pb.Tool(name="b", execution=9),  # type: ignore[arg-type]
    ]
    err = errors.from_rpc_error(
        await expect_status(
            c.CreateAgent(pb.CreateAgentRequest(agent=agent(tools=bad))), grpc.StatusCode.INVALID_ARGUMENT
        )
    )
    assert {v.field for v in err.violations} == {
        "agent.config.tools[0].url",
        "agent.config.tools[1].execution",
    }
    assert [a.id for a in (await c.ListAgents(pb.ListAgentsRequest())).agents] == [made.id]


async def test_a_config_stored_before_tool_executions_reads_as_client(serve, runtime, make_caller, tenant):
    built = await agents.build(runtime)
    running = await serve(built.registration)
    c = make_caller(running.channel, tenant=tenant)
    # What the store holds for a tool created before this step: no execution key at all.
    old = await built.service.create_agent(
        Principal(user_id="user-a", tenant_id=tenant, roles=frozenset({"owner"}), tier="pro"),
        display_name="Old",
        description="",
        state=None,
        config={"model": "echo:default", "tools": [{"name": "lookup"}]},
        template_id="",
        request_id="",
    )
    got = (await c.GetAgent(pb.GetAgentRequest(agent_id=old.id))).agent
    assert got.config.tools[0].execution == pb.TOOL_EXECUTION_CLIENT
    version = (await c.GetAgentVersion(pb.GetAgentVersionRequest(agent_id=old.id, version=1))).version
    assert version.config.tools[0].execution == pb.TOOL_EXECUTION_CLIENT
