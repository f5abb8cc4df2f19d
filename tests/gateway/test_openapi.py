"""/openapi.json and /v1/_routes come from the descriptors; a new RPC appears with no gateway code.
/v1/_page tells the chat page its mode."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import httpx
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from openapi_spec_validator import validate

from gateway import create_app, openapi
from gateway.routes import discover, routes_from_files


async def test_document_is_valid_openapi_31(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "Error" in doc["components"]["schemas"]


async def test_every_route_is_documented(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    table = (await client.get("/v1/_routes")).json()["routes"]
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    assert len(table) == len(discover()) and len(documented) == len(table)
    agent_path = doc["paths"]["/v1/agents/{agentId}"]
    assert agent_path["parameters"] == [
        {"name": "agentId", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    update = agent_path["patch"]
    assert update["description"] == "The path parameter `agentId` sets `agent.id`."
    assert [p["name"] for p in update["parameters"]] == ["updateMask"]
    assert update["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "agentmesh.agents.v1.Agent"
    )
    listing = {p["name"]: p for p in doc["paths"]["/v1/agents"]["get"]["parameters"]}
    assert listing["state"]["schema"]["enum"][0] == "AGENT_STATE_UNSPECIFIED"
    stream = doc["paths"]["/v1/runs/{runId}:join"]["get"]["responses"]["200"]["content"]
    assert set(stream) == {"application/x-ndjson", "text/event-stream"}
    agent = doc["components"]["schemas"]["agentmesh.agents.v1.Agent"]["properties"]
    assert agent["createTime"] == {"type": "string", "format": "date-time", "readOnly": True}
    assert agent["version"]["format"] == "int64"


async def test_one_path_per_template_shape_and_parameters_named_once(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    shapes = [re.sub(r"\{[^}]*\}", "{}", p) for p in doc["paths"]]
    assert len(shapes) == len(set(shapes)), sorted(s for s in shapes if shapes.count(s) > 1)
    for path, item in doc["paths"].items():
        in_path = re.findall(r"\{([^}]*)\}", path)
        assert [p["name"] for p in item.get("parameters", [])] == in_path, path
        for method, op in item.items():
            if method == "parameters":
                continue
            names = [p["name"] for p in op["parameters"]]
            assert all(p["in"] == "query" for p in op["parameters"]), (path, method)
            assert len(names) == len(set(names)) and not set(names) & set(in_path), (path, method)
            assert all("_" not in n for n in names), (path, method, names)  # lowerCamelCase


async def test_published_camel_case_and_proto_snake_case_queries_both_work(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any
) -> None:
    doc = (await client.get("/openapi.json")).json()
    published = [p["name"] for p in doc["paths"]["/v1/agents"]["get"]["parameters"]]
    assert published == ["pageSize", "pageToken", "state"]
    for query in ("pageSize=7&pageToken=t", "page_size=7&page_token=t"):
        r = await client.get(f"/v1/agents?{query}", headers=auth)
        assert r.status_code == 200, r.text
        request = fakes.agents.last("ListAgents").request
        assert (request.page_size, request.page_token) == (7, "t")
        fakes.agents.seen.clear()


def _extra_service() -> Any:
    """A service the gateway has never seen, with a rule: it must get a route and an OpenAPI entry."""
    pool = descriptor_pool.Default()
    f = descriptor_pb2.FileDescriptorProto(
        name="gateway_test/extra/v1/extra.proto", package="gateway_test.extra.v1", syntax="proto3"
    )
    f.dependency.append("google/api/annotations.proto")
    req = f.message_type.add(name="PingRequest")
    req.field.add(name="name", number=1, type=9, label=1)
    req.field.add(name="count", number=2, type=5, label=1)
    res = f.message_type.add(name="PingResponse")
    res.field.add(name="echo", number=1, type=9, label=1)
    svc = f.service.add(name="ExtraService")
    method = svc.method.add(
        name="Ping",
        input_type=".gateway_test.extra.v1.PingRequest",
        output_type=".gateway_test.extra.v1.PingResponse",
    )
    method.options.Extensions[annotations_pb2.http].get = "/v1/pings/{name}"
    pool.AddSerializedFile(f.SerializeToString())
    return pool.FindFileByName("gateway_test/extra/v1/extra.proto")


def test_a_new_rpc_gets_a_route_and_an_openapi_entry() -> None:
    file = _extra_service()
    routes = routes_from_files([file])
    assert [(r.http_method, r.template.text, r.name) for r in routes] == [
        ("GET", "/v1/pings/{name}", "ExtraService.Ping")
    ]
    doc = openapi.document(routes)
    validate(doc)
    ping = doc["paths"]["/v1/pings/{name}"]
    assert [p["name"] for p in ping["parameters"] + ping["get"]["parameters"]] == ["name", "count"]
    assert message_factory.GetMessageClass(file.message_types_by_name["PingRequest"])


async def test_page_config_has_demo_credentials_only_in_the_embedded_mode(
    client: httpx.AsyncClient, settings: Any, upstream: Any
) -> None:
    assert (await client.get("/v1/_page")).json() == {"demo": None}
    embedded = create_app(dataclasses.replace(settings, embedded=True), channels={"*": upstream.channel})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=embedded), base_url="http://gw") as c:
        demo = (await c.get("/v1/_page")).json()["demo"]
    assert demo["tenant"] == "demo" and demo["users"][0] == {"username": "user_1", "password": "1234"}
