"""Every rule shape, transcoded against fake services on a real gRPC server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.platform.telemetry import create_tracer_provider


async def test_body_star_creates_and_returns_proto3_json(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any
) -> None:
    r = await client.post(
        "/v1/agents", json={"agent": {"displayName": "Helper"}, "requestId": "r1"}, headers=auth
    )
    assert r.status_code == 200, r.text
    agent = r.json()["agent"]
    assert agent["displayName"] == "Helper" and agent["state"] == "AGENT_STATE_ACTIVE"
    assert agent["version"] == "1"  # int64 as a string, proto3 JSON
    assert fakes.agents.last("CreateAgent").request.request_id == "r1"


async def test_proto_field_names_are_accepted_too(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    r = await client.post("/v1/agents", json={"agent": {"display_name": "Snake"}}, headers=auth)
    assert r.status_code == 200 and r.json()["agent"]["displayName"] == "Snake"


async def test_path_variable_and_custom_verb(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any
) -> None:
    created = (await client.post("/v1/agents", json={"agent": {"displayName": "A"}}, headers=auth)).json()[
        "agent"
    ]
    r = await client.get(f"/v1/agents/{created['id']}", headers=auth)
    assert r.json()["agent"]["id"] == created["id"]
    r = await client.post(f"/v1/agents/{created['id']}:activate", json={}, headers=auth)
    assert r.status_code == 200
    assert fakes.agents.last("ActivateAgent").request.agent_id == created["id"]


async def test_nested_path_variable_with_field_body_and_query_mask(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any
) -> None:
    created = (await client.post("/v1/agents", json={"agent": {"displayName": "A"}}, headers=auth)).json()[
        "agent"
    ]
    r = await client.patch(
        f"/v1/agents/{created['id']}?updateMask=displayName",
        json={"displayName": "Renamed", "description": "ignored by the mask"},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    seen = fakes.agents.last("UpdateAgent").request
    assert seen.agent.id == created["id"] and list(seen.update_mask.paths) == ["display_name"]
    assert r.json()["agent"]["displayName"] == "Renamed" and r.json()["agent"]["description"] == ""


async def test_field_body_for_templates(client: httpx.AsyncClient, auth: dict[str, str], fakes: Any) -> None:
    r = await client.post("/v1/templates", json={"displayName": "T", "description": "d"}, headers=auth)
    assert r.status_code == 200, r.text
    sent = fakes.agents.last("CreateTemplate").request.template
    assert (sent.display_name, sent.description) == ("T", "d")


async def test_query_parameters_scalar_enum_and_integer(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any
) -> None:
    r = await client.get("/v1/agents?page_size=5&pageToken=abc&state=AGENT_STATE_ACTIVE", headers=auth)
    assert r.status_code == 200, r.text
    req = fakes.agents.last("ListAgents").request
    assert (req.page_size, req.page_token, req.state) == (5, "abc", 1)


async def test_two_path_variables_int64(client: httpx.AsyncClient, auth: dict[str, str], fakes: Any) -> None:
    r = await client.get("/v1/agents/a1/versions/7", headers=auth)
    assert r.status_code == 200
    req = fakes.agents.last("GetAgentVersion").request
    assert (req.agent_id, req.version) == ("a1", 7)


async def test_additional_bindings_serve_the_same_rpc(client: httpx.AsyncClient) -> None:
    one = await client.get("/v1/identity/jwks")
    two = await client.get("/.well-known/jwks.json")
    assert one.status_code == two.status_code == 200
    assert one.json() == two.json() and one.json()["keys"][0]["kty"] == "OKP"


async def test_response_body_on_a_stream(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    r = await client.get("/v1/agents:watch", headers=auth)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [httpx.Response(200, content=line).json() for line in r.content.splitlines()]
    assert [line["result"]["agentId"] for line in lines] == ["agent-1", "agent-2", "agent-3"]


async def test_bool_query_parameter_and_error_after_stream_started(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    r = await client.get("/v1/agents:watch?all_tenants=true", headers=auth)
    lines = [httpx.Response(200, content=line).json() for line in r.content.splitlines()]
    assert len(lines) == 4 and lines[-1]["error"]["status"] == "PERMISSION_DENIED"


async def test_headers_forwarded_allowlist_and_request_id(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any
) -> None:
    r = await client.get(
        "/v1/agents",
        headers={
            **auth,
            "X-Request-Id": "req-123",
            "Cookie": "secret=1",
            "Connection": "keep-alive",
            "X-Other": "no",
        },
    )
    assert r.headers["x-request-id"] == "req-123"
    md = fakes.agents.last("ListAgents").metadata
    assert md["authorization"] == auth["Authorization"] and md["x-request-id"] == "req-123"
    assert "cookie" not in md and "x-other" not in md and "connection" not in md


async def test_request_id_generated_when_absent_or_insane(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any
) -> None:
    r = await client.get("/v1/agents", headers={**auth, "X-Request-Id": "bad id\twith spaces"})
    generated = r.headers["x-request-id"]
    assert generated and generated != "bad id\twith spaces"
    assert fakes.agents.last("ListAgents").metadata["x-request-id"] == generated


@pytest.mark.parametrize(
    ("header", "ok"), [("5S", True), ("200m", True), ("1H", True), ("5 seconds", False), ("-1S", False)]
)
async def test_grpc_timeout_header(
    client: httpx.AsyncClient, auth: dict[str, str], header: str, ok: bool
) -> None:
    r = await client.get("/v1/agents", headers={**auth, "Grpc-Timeout": header})
    assert r.status_code == (200 if ok else 400)
    if not ok:
        assert r.json()["details"][0]["fieldViolations"][0]["field"] == "grpc-timeout"


async def test_tiny_deadline_is_504(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    # gRPC core rounds deadlines up to the next millisecond, so the upstream must be slower than that
    # for "1n" to expire reliably: the fake's "slow" agent answers after half a second.
    r = await client.get("/v1/agents/slow", headers={**auth, "Grpc-Timeout": "1n"})
    assert r.status_code == 504 and r.json()["status"] == "DEADLINE_EXCEEDED"


async def test_traceparent_continued_and_started(make_app: Any, auth: dict[str, str], fakes: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = create_tracer_provider("gateway-test", "none", span_exporter=exporter)
    app = make_app(tracer_provider=provider)
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        await c.get("/v1/agents", headers={**auth, "traceparent": incoming})
        forwarded = fakes.agents.last("ListAgents").metadata["traceparent"]
        assert forwarded.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
        assert forwarded.split("-")[2] != "b7ad6b7169203331"  # the gateway's own span is the parent
        await c.get("/v1/agents", headers=auth)
        started = fakes.agents.last("ListAgents").metadata["traceparent"]
    spans = exporter.get_finished_spans()
    assert [s.kind.name for s in spans] == ["CLIENT", "SERVER", "CLIENT", "SERVER"]
    client, server = spans[2], spans[3]
    assert started.split("-")[1] == format(server.context.trace_id, "032x")
    # Upstream's parent is the gateway's client span, whose parent is the gateway's server span.
    assert started.split("-")[2] == format(client.context.span_id, "016x")
    assert client.parent.span_id == server.context.span_id
    provider.shutdown()
