"""The rules of an agent's tools (execution, url, timeout, names, schemas, tier limits), on the service
layer with the in-memory store: every rejection is INVALID_ARGUMENT (format) or FAILED_PRECONDITION
(tier) naming agent.config.tools[i].<field>, and stores nothing."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh.agents.v1 import agents_service_pb2 as pb
from services.agents import convert
from services.agents.models import ChangeType, Tool, ToolExecution
from services.agents.service import AgentService
from services.platform import errors
from services.platform.auth import Principal
from services.platform.pagination import PageTokens
from services.platform.settings import ToolSettings
from tests.fakes.agents import FakeEvents, FakeStore

HTTP = "TOOL_EXECUTION_HTTP"


def owner(tier: str = "pro") -> Principal:
    return Principal(user_id="u1", tenant_id="t1", roles=frozenset({"owner"}), tier=tier)


@pytest.fixture
def parts() -> tuple[AgentService, FakeStore]:
    store = FakeStore()
    ticks = iter(range(1, 10_000))
    service = AgentService(
        store=store,
        events=FakeEvents(),
        page_tokens=PageTokens(b"k"),
        clock=lambda: float(next(ticks)),
        tool_hosts=ToolSettings(allowed_hosts=("localhost", "tools.internal:8080")),
    )
    return service, store


async def _create(service: AgentService, tools: list[dict[str, Any]], tier: str = "pro") -> Any:
    return await service.create_agent(
        owner(tier),
        display_name="A",
        description="",
        state=None,
        config={"model": "echo:default", "tools": tools},
        template_id="",
        request_id="",
    )


VALID = [
    ("client tool", [{"name": "lookup"}]),
    ("client tool needing approval", [{"name": "refund", "requires_approval": True}]),
    ("https tool anywhere", [{"name": "s", "execution": HTTP, "url": "https://tools.example.com/s"}]),
    ("http to an allowed host", [{"name": "s", "execution": HTTP, "url": "http://localhost:9000/s"}]),
    (
        "http to an allowed host:port",
        [{"name": "s", "execution": HTTP, "url": "http://tools.internal:8080/"}],
    ),
    (
        "timeout at the tier max",
        [{"name": "s", "execution": HTTP, "url": "https://x.io", "timeout_ms": 30_000}],
    ),
    ("names of every allowed character", [{"name": "a-Z_0"}, {"name": "b" * 64}]),
    (
        "a JSON schema",
        [{"name": "q", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}],
    ),
]


@pytest.mark.parametrize(("case", "tools"), VALID, ids=[v[0] for v in VALID])
async def test_valid_tools_are_stored_as_sent(parts, case, tools):
    service, store = parts
    made = await _create(service, tools)
    assert store.agents[made.id].config["tools"] == tools


INVALID = [
    ("duplicate names", [{"name": "a"}, {"name": "a"}], "tools[1].name", "duplicate"),
    ("bad name", [{"name": "has space"}], "tools[0].name", "[a-zA-Z0-9_-]{1,64}"),
    ("name too long", [{"name": "x" * 65}], "tools[0].name", "[a-zA-Z0-9_-]{1,64}"),
    (
        "bad schema names its path",
        [{"name": "q", "parameters": {"type": "object", "properties": {"q": {"type": 5}}}}],
        "tools[0].parameters",
        "at /properties/q/type",
    ),
    ("http without url", [{"name": "s", "execution": HTTP}], "tools[0].url", "is required"),
    (
        "plain http outside the allow list",
        [{"name": "s", "execution": HTTP, "url": "http://tools.example.com/s"}],
        "tools[0].url",
        "must be https",
    ),
    (
        "allowed host on another port",
        [{"name": "s", "execution": HTTP, "url": "http://tools.internal:9090/"}],
        "tools[0].url",
        "must be https",
    ),
    (
        "not http at all",
        [{"name": "s", "execution": HTTP, "url": "ftp://x.io/f"}],
        "tools[0].url",
        "absolute URL",
    ),
    ("no host", [{"name": "s", "execution": HTTP, "url": "https:///path"}], "tools[0].url", "absolute URL"),
    (
        "client tool with a url",
        [{"name": "s", "url": "https://x.io"}],
        "tools[0].url",
        "client tools have no url",
    ),
    (
        "negative timeout",
        [{"name": "s", "execution": HTTP, "url": "https://x.io", "timeout_ms": -1}],
        "tools[0].timeout_ms",
        "must not be negative",
    ),
    ("unknown execution", [{"name": "s", "execution": 9}], "tools[0].execution", "unknown execution 9"),
]


@pytest.mark.parametrize(("case", "tools", "field", "says"), INVALID, ids=[v[0] for v in INVALID])
async def test_invalid_tools_are_invalid_argument_naming_the_field(parts, case, tools, field, says):
    service, store = parts
    with pytest.raises(errors.InvalidArgument) as caught:
        await _create(service, tools)
    found = {v.field: v.description for v in caught.value.violations}
    assert f"agent.config.{field}" in found, found
    assert says in found[f"agent.config.{field}"]
    assert store.agents == {} and store.versions == {}


async def test_timeout_above_the_tier_max_is_a_tier_limit(parts):
    service, store = parts
    tool = {"name": "s", "execution": HTTP, "url": "https://x.io", "timeout_ms": 10_001}
    with pytest.raises(errors.FailedPrecondition) as caught:
        await _create(service, [tool], tier="free")
    assert [(v.subject, v.type) for v in caught.value.violations] == [
        ("agent.config.tools[0].timeout_ms", "max_tool_timeout_ms")
    ]
    assert store.agents == {}
    # The same tool fits the pro tier (30,000), and a dry run reports the free tier's limit.
    await _create(service, [tool], tier="pro")
    report = await service.validate(owner("free"), "A", {"model": "echo:default", "tools": [tool]})
    assert [v.type for v in report] == ["max_tool_timeout_ms"]


async def test_too_many_tools_for_the_tier(parts):
    service, store = parts
    with pytest.raises(errors.FailedPrecondition) as caught:
        await _create(service, [{"name": f"t{i}"} for i in range(4)], tier="free")
    assert [v.type for v in caught.value.violations] == ["max_tools"]
    assert store.agents == {}
    await _create(service, [{"name": f"t{i}"} for i in range(3)], tier="free")


async def test_versions_diff_and_rollback_carry_the_tool_fields(parts):
    service, _ = parts
    client = {"name": "s"}
    made = await _create(service, [client])
    http = {
        "name": "s",
        "execution": HTTP,
        "url": "https://x.io/s",
        "timeout_ms": 5_000,
        "requires_approval": True,
    }
    config = {"model": "echo:default", "tools": [http]}
    updated = await service.update_agent(
        owner(),
        made.id,
        etag="",
        paths=["config.tools"],
        patch={"display_name": "", "description": "", "state": "", "config": config},
    )
    assert updated.config["tools"] == [http]
    diff = await service.diff_versions(owner(), made.id, 1, 2)
    assert [(d.path, d.old, d.new) for d in diff] == [("config.tools", [client], [http])]
    back = await service.rollback(owner(), made.id, version=1, etag="")
    assert back.config["tools"] == [client]
    v3 = await service.get_version(owner(), made.id, 3)
    assert v3.change_type is ChangeType.ROLLED_BACK and v3.changed_fields == ["config.tools"]


def test_a_tool_stored_before_executions_reads_as_client():
    # Configs from before tools had an execution have only name, description and parameters.
    old = {"model": "echo:default", "tools": [{"name": "lookup", "description": "d"}]}
    assert Tool.from_config(old["tools"][0]).execution is ToolExecution.CLIENT
    proto = convert.config_from_dict(old)
    assert proto.tools[0].execution == pb.TOOL_EXECUTION_CLIENT
    # Sent back (explicitly CLIENT now), it is the same stored config: no change in a diff.
    assert convert.config_to_dict(proto) == old
