"""google.api.field_behavior on HTTP requests: a missing REQUIRED field is a 400 with a BadRequest
violation before any upstream call; OUTPUT_ONLY fields in a body never reach the service (AIP-203)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.conversation.v1 import conversation_service_pb2 as conv_pb
from gateway import field_behavior
from gateway.errors import BadInput


def violations(r: httpx.Response) -> list[dict[str, str]]:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == "INVALID_ARGUMENT"
    (bad_request,) = [d for d in body["details"] if d["@type"].endswith("/google.rpc.BadRequest")]
    return list(bad_request["fieldViolations"])


@pytest.mark.parametrize(
    ("method", "path", "body", "missing"),
    [
        # A `*` body: both REQUIRED fields named, by proto path and by JSON name.
        (
            "POST",
            "/v1/identity/me:changePassword",
            {},
            {"old_password": "oldPassword", "new_password": "newPassword"},
        ),
        ("POST", "/v1/identity/me:changePassword", {"oldPassword": "a"}, {"new_password": "newPassword"}),
        # A field body beside a REQUIRED non-body field (query), and a REQUIRED message (FieldMask).
        ("PATCH", "/v1/agents/a1", {"displayName": "x"}, {"update_mask": "updateMask"}),
        # A REQUIRED query parameter.
        ("GET", "/v1/conversations/c1/context", None, {"token_budget": "tokenBudget"}),
        ("GET", "/v1/runs", None, {"session_id": "sessionId"}),
        # Path variables set, the body's REQUIRED field missing.
        ("POST", "/v1/sessions/s1:sendMessage", {}, {"text": "text"}),
        ("POST", "/v1/agents", {}, {"agent": "agent"}),
    ],
)
async def test_missing_required_field_is_400_before_any_upstream_call(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    fakes: Any,
    method: str,
    path: str,
    body: Any,
    missing: dict[str, str],
) -> None:
    r = await client.request(method, path, json=body, headers=auth)
    found = violations(r)
    assert [v["field"] for v in found] == list(missing)
    for v in found:
        assert missing[v["field"]] in v["description"], v
    assert next(iter(missing)) in r.json()["message"]
    assert not fakes.agents.seen
    assert not fakes.conversation.seen
    assert not fakes.orchestration.seen


async def test_required_fields_from_path_query_and_body_together_pass(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any
) -> None:
    r = await client.post("/v1/sessions/s1:sendMessage", json={"text": "hi"}, headers=auth)
    assert r.status_code != 400, r.text
    sent = fakes.orchestration.last("SendMessage").request
    assert (sent.session_id, sent.text) == ("s1", "hi")
    r = await client.patch("/v1/agents/a1?updateMask=displayName", json={"displayName": "x"}, headers=auth)
    assert r.status_code == 404, r.text  # the fake's answer: the call went through
    assert fakes.agents.last("UpdateAgent").request.update_mask.paths == ["display_name"]


async def test_output_only_fields_in_a_body_are_dropped(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any
) -> None:
    body = {
        "agent": {
            "displayName": "Helper",
            "creator": "someone-else",
            "version": "7",
            "createTime": "2020-01-01T00:00:00Z",
            "templateId": "t9",
        }
    }
    r = await client.post("/v1/agents", json=body, headers=auth)
    assert r.status_code == 200, r.text
    sent = fakes.agents.last("CreateAgent").request.agent
    assert sent.display_name == "Helper"
    assert (sent.creator, sent.version, sent.template_id) == ("", 0, "")
    assert not sent.HasField("create_time")


def test_clear_output_only_walks_repeated_messages_and_keeps_path_bound_fields() -> None:
    page = agents_pb.ListAgentsResponse(agents=[agents_pb.Agent(display_name="a", creator="x", version=3)])
    field_behavior.clear_output_only(page)
    assert (page.agents[0].display_name, page.agents[0].creator, page.agents[0].version) == ("a", "", 0)
    agent = agents_pb.Agent(display_name="a", creator="x")
    field_behavior.clear_output_only(agent, keep=["creator"])
    assert agent.creator == "x"


def test_check_required_treats_a_default_scalar_as_missing() -> None:
    request = conv_pb.GetContextRequest(conversation_id="c1", token_budget=0)
    with pytest.raises(BadInput) as caught:
        field_behavior.check_required(request, request.DESCRIPTOR)
    assert caught.value.violations == [("token_budget", "is required (tokenBudget in JSON)")]
    request.token_budget = 100
    field_behavior.check_required(request, request.DESCRIPTOR)
