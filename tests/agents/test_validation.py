"""Bad input: INVALID_ARGUMENT with every field violation at once; tier limits: FAILED_PRECONDITION.
Nothing stored changes on a rejected request."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from agentmesh.agents.v1 import agents_service_pb2 as pb
from services.platform import errors
from tests.agents.conftest import agent
from tests.helpers import expect_status


def _params(value: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


BAD = [
    ("empty name", agent(""), "agent.display_name"),
    ("long name", agent("x" * 101), "agent.display_name"),
    (
        "long description",
        pb.Agent(display_name="x", description="d" * 1001, config=agent().config),
        "agent.description",
    ),
    ("no model", pb.Agent(display_name="x"), "agent.config.model"),
    ("model format", agent(model="gpt-4o"), "agent.config.model"),
    ("unknown provider", agent(model="anthropic:claude"), "agent.config.model"),
    ("big prompt", agent(system_prompt="p" * (32 * 1024 + 1)), "agent.config.system_prompt"),
    ("temperature high", agent(temperature=2.5), "agent.config.temperature"),
    ("temperature negative", agent(temperature=-0.1), "agent.config.temperature"),
    ("negative output tokens", agent(max_output_tokens=-1), "agent.config.max_output_tokens"),
    ("bad tool name", agent(tools=[pb.Tool(name="has space")]), "agent.config.tools[0].name"),
    ("duplicate tools", agent(tools=[pb.Tool(name="a"), pb.Tool(name="a")]), "agent.config.tools[1].name"),
    (
        "bad schema",
        agent(
            tools=[
                pb.Tool(name="a", parameters=_params({"type": "object", "properties": {"q": {"type": 5}}}))
            ]
        ),
        "agent.config.tools[0].parameters",
    ),
    (
        "not an object schema",
        agent(tools=[pb.Tool(name="a", parameters=_params({"type": "string"}))]),
        "agent.config.tools[0].parameters",
    ),
    ("many metadata", agent(metadata={f"k{i}": "v" for i in range(33)}), "agent.config.metadata"),
]


@pytest.mark.parametrize(("case", "bad", "field"), BAD, ids=[b[0] for b in BAD])
async def test_bad_create_is_invalid_argument(serve, make_caller, tenant, case, bad, field):
    running = await serve("agents")
    c = make_caller(running.channel, tenant=tenant)
    err = errors.from_rpc_error(
        await expect_status(c.CreateAgent(pb.CreateAgentRequest(agent=bad)), grpc.StatusCode.INVALID_ARGUMENT)
    )
    assert field in [v.field for v in err.violations]
    assert list((await c.ListAgents(pb.ListAgentsRequest())).agents) == []


async def test_every_violation_at_once_and_validate_dry_run(serve, make_caller, tenant):
    running = await serve("agents")
    c = make_caller(running.channel, tenant=tenant, tier="free")
    config = pb.AgentConfig(
        model="nope", temperature=3, tools=[pb.Tool(name="a"), pb.Tool(name="a")], max_output_tokens=-5
    )
    err = errors.from_rpc_error(
        await expect_status(
            c.CreateAgent(pb.CreateAgentRequest(agent=pb.Agent(display_name="", config=config))),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    )
    assert {v.field for v in err.violations} == {
        "agent.display_name",
        "agent.config.model",
        "agent.config.temperature",
        "agent.config.tools[1].name",
        "agent.config.max_output_tokens",
    }
    report = await c.ValidateAgentConfig(pb.ValidateAgentConfigRequest(display_name="", config=config))
    assert not report.valid and len(report.violations) == 5
    # Tier limits (free: 3 tools, 8000 context tokens, gpt-4o-mini only), all at once, with limit names.
    over = pb.AgentConfig(
        model="openai:gpt-4o",
        tools=[pb.Tool(name=f"t{i}") for i in range(4)],
        context_policy=pb.ContextPolicy(max_context_tokens=9000),
    )
    report = await c.ValidateAgentConfig(pb.ValidateAgentConfigRequest(display_name="ok", config=over))
    assert {v.limit for v in report.violations} == {"allowed_models", "max_tools", "max_context_tokens"}
    err = errors.from_rpc_error(
        await expect_status(
            c.CreateAgent(pb.CreateAgentRequest(agent=pb.Agent(display_name="ok", config=over))),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    )
    assert {v.type for v in err.violations} == {"allowed_models", "max_tools", "max_context_tokens"}
    good = await c.ValidateAgentConfig(
        pb.ValidateAgentConfigRequest(display_name="ok", config=agent().config)
    )
    assert good.valid and not good.violations
    assert list((await c.ListAgents(pb.ListAgentsRequest())).agents) == []


async def test_bad_updates_change_nothing(serve, make_caller, tenant):
    running = await serve("agents")
    c = make_caller(running.channel, tenant=tenant, tier="free")
    a = (await c.CreateAgent(pb.CreateAgentRequest(agent=agent("keep")))).agent

    def update(paths, **fields):
        return c.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(id=a.id, **fields), update_mask=field_mask_pb2.FieldMask(paths=paths)
            )
        )

    err = errors.from_rpc_error(
        await expect_status(
            update(["display_name", "state", "config.nope"]), grpc.StatusCode.INVALID_ARGUMENT
        )
    )
    assert [v.field for v in err.violations] == ["update_mask", "update_mask"]
    await expect_status(update([]), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(update(["display_name"]), grpc.StatusCode.INVALID_ARGUMENT)  # clears a required name
    err = errors.from_rpc_error(
        await expect_status(
            update(["config.model"], config=pb.AgentConfig(model="openai:gpt-4o")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    )
    assert err.violations[0].type == "allowed_models"
    await expect_status(c.GetAgent(pb.GetAgentRequest(agent_id="")), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(
        c.GetAgentVersion(pb.GetAgentVersionRequest(agent_id=a.id, version=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        c.ListAgentVersions(pb.ListAgentVersionsRequest(agent_id=a.id, page_token="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        c.ListTemplates(pb.ListTemplatesRequest(page_token="bogus")), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_status(
        c.CreateTemplate(
            pb.CreateTemplateRequest(template=pb.Template(display_name="", config=agent().config))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert (await c.GetAgent(pb.GetAgentRequest(agent_id=a.id))).agent == a
    assert all(t.builtin for t in (await c.ListTemplates(pb.ListTemplatesRequest())).templates)


async def test_error_details_are_typed(serve, make_caller, tenant):
    running = await serve("agents")
    c = make_caller(running.channel, tenant=tenant)
    err = errors.from_rpc_error(
        await expect_status(
            c.CreateAgent(pb.CreateAgentRequest(agent=agent(""))), grpc.StatusCode.INVALID_ARGUMENT
        )
    )
    assert isinstance(err, errors.InvalidArgument)
