"""/openapi.json takes `required` and `readOnly` from google.api.field_behavior, and the paths moved in
issue 13 still answer at their old places (additional_bindings)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.routes import discover


async def _doc(client: httpx.AsyncClient) -> dict[str, Any]:
    doc: dict[str, Any] = (await client.get("/openapi.json")).json()
    return doc


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["components"]["schemas"][name]
    return schema


async def test_output_only_fields_are_read_only_and_identifiers_are_not(client: httpx.AsyncClient) -> None:
    agent = _schema(await _doc(client), "agentmesh.agents.v1.Agent")
    read_only = sorted(name for name, prop in agent["properties"].items() if prop.get("readOnly"))
    assert read_only == ["createTime", "creator", "templateId", "updateTime", "version"]
    # The id names the agent in UpdateAgent and the etag goes back on update: neither is read-only.
    assert "readOnly" not in agent["properties"]["id"] and "readOnly" not in agent["properties"]["etag"]
    # A resource is also a PATCH body, where unmasked fields are absent: nothing is required in it.
    assert "required" not in agent


async def test_required_request_fields_are_listed(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    assert _schema(doc, "agentmesh.identity.v1.LoginRequest")["required"] == [
        "tenant",
        "username",
        "password",
    ]
    assert "required" not in _schema(doc, "agentmesh.identity.v1.LogoutRequest")
    create = doc["paths"]["/v1/agents"]["post"]["requestBody"]
    assert create["required"] is True
    assert create["content"]["application/json"]["schema"]["$ref"].endswith("CreateAgentRequest")
    assert _schema(doc, "agentmesh.agents.v1.CreateAgentRequest")["required"] == ["agent"]
    append = doc["paths"]["/v1/conversations/{conversationId}/messages"]["post"]["requestBody"]
    assert append["required"] is True


async def test_a_star_body_does_not_ask_for_what_the_path_binds(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    activate = doc["paths"]["/v1/agents/{agentId}:activate"]["post"]["requestBody"]
    body = activate["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"etag"} and "required" not in body
    assert activate["required"] is False
    send = doc["paths"]["/v1/sessions/{sessionId}:sendMessage"]["post"]["requestBody"]
    assert send["content"]["application/json"]["schema"]["required"] == ["text"]
    assert send["required"] is True
    # The shared component still says what gRPC callers must send.
    assert _schema(doc, "agentmesh.agents.v1.ActivateAgentRequest")["required"] == ["agentId"]


async def test_required_query_parameters(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)

    def params(path: str) -> dict[str, bool]:
        return {p["name"]: p["required"] for p in doc["paths"][path]["get"]["parameters"]}

    assert params("/v1/conversations:search") == {
        "query": True,
        "pageSize": False,
        "pageToken": False,
        "agentId": False,
    }
    assert params("/v1/runs")["sessionId"] is True
    assert not any(params("/v1/agents").values())


@pytest.mark.parametrize(
    ("new", "old", "method"),
    [
        ("/v1/tenant/stats", "/v1/conversationStats", "GetTenantStats"),
        ("/v1/tenant/retentionPolicy", "/v1/retentionPolicy", "GetRetentionPolicy"),
        ("/v1/runs?sessionId=s1", "/v1/sessions/s1/runs", "ListRuns"),
    ],
)
async def test_moved_paths_answer_at_the_old_place_too(
    client: httpx.AsyncClient, auth: dict[str, str], new: str, old: str, method: str
) -> None:
    templates = {r.template.text for r in discover() if r.method.name == method}
    assert len(templates) == 2
    # The fake upstream does not implement these RPCs: UNIMPLEMENTED (501) shows the call got there,
    # where a path no route takes is a 404 from the gateway itself.
    statuses = [(await client.get(path, headers=auth)).status_code for path in (new, old)]
    assert statuses == [501, 501]
    assert (await client.get("/v1/tenant/nothing", headers=auth)).status_code == 404
