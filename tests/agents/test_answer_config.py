"""The config fields of issue 16: fallback_models (format INVALID_ARGUMENT, tier FAILED_PRECONDITION,
no repeats, at most 3), allow_model_override and response_format (a Draft 2020-12 schema whose
violation names the path inside it, a name, no schema on TEXT). Rules against the fakes; one gRPC round
trip of the fields."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from agentmesh.agents.v1 import agents_service_pb2 as pb
from services.agents.service import AgentService
from services.platform import errors
from services.platform.auth import Principal
from services.platform.pagination import PageTokens
from tests.agents.conftest import agent
from tests.fakes.agents import FakeEvents, FakeStore
from tests.helpers import expect_status

JSON = "RESPONSE_FORMAT_TYPE_JSON_SCHEMA"
TEXT = "RESPONSE_FORMAT_TYPE_TEXT"
SCHEMA = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}


def _owner(tier: str = "pro") -> Principal:
    return Principal(user_id="u1", tenant_id="t1", roles=frozenset({"owner"}), tier=tier)


@pytest.fixture
def service() -> tuple[AgentService, FakeStore]:
    store = FakeStore()
    ticks = iter(range(1, 10_000))
    built = AgentService(
        store=store, events=FakeEvents(), page_tokens=PageTokens(b"k"), clock=lambda: float(next(ticks))
    )
    return built, store


async def _create(service: AgentService, config: dict[str, Any], tier: str = "pro") -> Any:
    return await service.create_agent(
        _owner(tier),
        display_name="A",
        description="",
        state=None,
        config={"model": "echo:default", **config},
        template_id="",
        request_id="",
    )


BAD_FORMAT = [
    ("fallback format", {"fallback_models": ["gpt-4o"]}, "agent.config.fallback_models[0]"),
    ("fallback provider", {"fallback_models": ["echo:a", "anthropic:x"]}, "agent.config.fallback_models[1]"),
    ("fallback repeated", {"fallback_models": ["echo:a", "echo:a"]}, "agent.config.fallback_models[1]"),
    ("fallback is the model", {"fallback_models": ["echo:default"]}, "agent.config.fallback_models[0]"),
    ("four fallbacks", {"fallback_models": [f"echo:{i}" for i in range(4)]}, "agent.config.fallback_models"),
    ("json without schema", {"response_format": {"type": JSON}}, "agent.config.response_format.schema"),
    (
        "schema keyword wrong",
        {"response_format": {"type": JSON, "schema": {"properties": {"x": {"type": "strin"}}}}},
        "agent.config.response_format.schema/properties/x/type",
    ),
    (
        "schema minimum wrong",
        {"response_format": {"type": JSON, "schema": {"type": "integer", "minimum": "1"}}},
        "agent.config.response_format.schema/minimum",
    ),
    (
        "bad name",
        {"response_format": {"type": JSON, "schema": SCHEMA, "name": "a b"}},
        "agent.config.response_format.name",
    ),
    (
        "long name",
        {"response_format": {"type": JSON, "schema": SCHEMA, "name": "n" * 65}},
        "agent.config.response_format.name",
    ),
    (
        "text with schema",
        {"response_format": {"type": TEXT, "schema": SCHEMA}},
        "agent.config.response_format.schema",
    ),
    ("unknown type", {"response_format": {"type": 7}}, "agent.config.response_format.type"),
]


@pytest.mark.parametrize(("case", "config", "field"), BAD_FORMAT, ids=[b[0] for b in BAD_FORMAT])
async def test_format_rules_are_invalid_argument_and_store_nothing(service, case, config, field):
    svc, store = service
    with pytest.raises(errors.InvalidArgument) as caught:
        await _create(svc, config)
    assert field in [v.field for v in caught.value.violations]
    assert store.agents == {}


async def test_fallback_outside_the_tier_is_failed_precondition(service):
    svc, store = service
    with pytest.raises(errors.FailedPrecondition) as caught:
        await _create(svc, {"fallback_models": ["echo:b", "openai:gpt-4o"]}, tier="free")
    assert [(v.subject, v.type) for v in caught.value.violations] == [
        ("agent.config.fallback_models[1]", "allowed_models")
    ]
    assert store.agents == {}
    # The same config is fine where the tier has the model.
    created = await _create(svc, {"fallback_models": ["echo:b", "openai:gpt-4o"]}, tier="pro")
    assert created.config["fallback_models"] == ["echo:b", "openai:gpt-4o"]


async def test_valid_formats_are_taken(service):
    svc, _ = service
    for config in (
        {"response_format": {"type": JSON, "schema": SCHEMA, "name": "reply_1"}},
        {"response_format": {"type": JSON, "schema": {"type": "array", "items": {"enum": ["a", 1]}}}},
        {"response_format": {"type": TEXT}},
        {"fallback_models": ["echo:a", "echo:b", "openai:gpt-4o"], "allow_model_override": True},
    ):
        assert (await _create(svc, config)).config["model"] == "echo:default"


async def test_the_fields_round_trip_over_grpc(serve, make_caller, tenant):
    running = await serve("agents")
    c = make_caller(running.channel, tenant=tenant)
    schema = struct_pb2.Struct()
    schema.update(SCHEMA)
    fmt = pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema=schema, name="reply")
    created = (
        await c.CreateAgent(
            pb.CreateAgentRequest(
                agent=agent(fallback_models=["echo:b"], allow_model_override=True, response_format=fmt)
            )
        )
    ).agent
    got = (await c.GetAgent(pb.GetAgentRequest(agent_id=created.id))).agent
    assert list(got.config.fallback_models) == ["echo:b"]
    assert got.config.allow_model_override
    assert got.config.response_format == fmt
    assert json_format.MessageToDict(got.config.response_format.schema) == SCHEMA

    # A broken schema on update: the path inside it, and the stored agent unchanged.
    broken = struct_pb2.Struct()
    broken.update({"type": "object", "properties": {"x": {"type": 5}}})
    err = errors.from_rpc_error(
        await expect_status(
            c.UpdateAgent(
                pb.UpdateAgentRequest(
                    agent=pb.Agent(
                        id=created.id,
                        config=pb.AgentConfig(
                            response_format=pb.ResponseFormat(
                                type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema=broken
                            )
                        ),
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["config.response_format"]),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    )
    assert [v.field for v in err.violations] == ["agent.config.response_format.schema/properties/x/type"]
    assert (await c.GetAgent(pb.GetAgentRequest(agent_id=created.id))).agent == got

    # The dry run reports the tier's refusal of a fallback with the limit's name.
    free = make_caller(running.channel, tenant=tenant, tier="free")
    report = await free.ValidateAgentConfig(
        pb.ValidateAgentConfigRequest(
            display_name="x", config=pb.AgentConfig(model="echo:a", fallback_models=["openai:gpt-4o"])
        )
    )
    assert [(v.field, v.limit) for v in report.violations] == [
        ("config.fallback_models[0]", "allowed_models")
    ]
