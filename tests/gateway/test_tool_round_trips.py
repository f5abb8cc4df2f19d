"""Client tools and approvals through the real gateway and the real services (identity, agents,
conversation and orchestration on PostgreSQL and Redis, tests/fuzz/stack.py's in-process mesh):
over HTTP, SSE until the pause, the answer by POST, the rest by `:join` with Last-Event-ID; over
the plain WebSocket, the frames docs/gateway.md documents (sent as written there), with the answer
on the same socket. Every round trip ends with the stored history read back over HTTP."""

from __future__ import annotations

import asyncio
import json
import pathlib
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect

from agentmesh.identity.v1 import identity_service_pb2 as id_pb
from services.identity.keys import private_pem
from tests.conftest import _test_settings
from tests.fuzz.stack import PASSWORD, RunningStack, Stack
from tests.gateway.test_streaming import sse_events

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
# Accepts what echo:tools sends ({"text": ...}) and what the documented edit sends ({"city": ...}).
PARAMETERS = {"type": "object", "properties": {"text": {"type": "string"}, "city": {"type": "string"}}}
SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    key_file = tmp_path_factory.mktemp("tool-keys") / "signing.pem"
    key_file.write_bytes(private_pem(Ed25519PrivateKey.generate()))
    running = RunningStack(_test_settings(pg_url, redis_url), str(key_file))
    try:
        yield running.stack
    finally:
        running.close()


def _owner_token(stack: Stack) -> str:
    """A new tenant (free tier) signed up through identity; its owner's access token."""
    reply = stack.stubs().identity.SignUp(
        id_pb.SignUpRequest(
            tenant_name=f"tools-{uuid.uuid4().hex[:10]}", username="owner", password=PASSWORD
        ),
        timeout=10,
    )
    return reply.tokens.access_token


def _tool(name: str, *, approval: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "description": name,
        "parameters": PARAMETERS,
        "execution": "TOOL_EXECUTION_CLIENT",
        "requiresApproval": approval,
    }


async def _session(client: httpx.AsyncClient, *tools: dict[str, Any]) -> dict[str, Any]:
    agent = await client.post(
        "/v1/agents",
        json={"agent": {"displayName": "tools", "config": {"model": "echo:tools", "tools": list(tools)}}},
    )
    assert agent.status_code == 200, agent.text
    started = await client.post("/v1/sessions", json={"agentId": agent.json()["agent"]["id"]})
    assert started.status_code == 200, started.text
    session: dict[str, Any] = started.json()["session"]
    return session


async def _history(client: httpx.AsyncClient, conversation_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/conversations/{conversation_id}/messages", params={"pageSize": 50})
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return sorted(messages, key=lambda m: m["createTime"])


def _coherent(history: list[dict[str, Any]]) -> None:
    """Every call of an assistant message is answered by exactly one tool message, right after it."""
    for i, message in enumerate(history):
        calls = [c["id"] for c in message.get("toolCalls", [])]
        if calls:
            answers = history[i + 1 : i + 1 + len(calls)]
            assert [m["role"] for m in answers] == ["MESSAGE_ROLE_TOOL"] * len(calls), history
            assert sorted(m["toolCallId"] for m in answers) == sorted(calls), history


def _documented_frames() -> dict[str, dict[str, Any]]:
    """The client frames docs/gateway.md shows for answering tool calls, parsed as written."""
    section = DOC.read_text().split("The client answers with\n", 1)[1].split("\n\n(", 1)[0]
    frames: dict[str, dict[str, Any]] = {}
    for chunk in textwrap.dedent(section).strip().split('\n{"type"'):
        text = chunk if chunk.startswith("{") else '{"type"' + chunk
        frame = json.loads(text)
        frames[frame["type"]] = frame
    return frames


def _documented_call_fields() -> set[str]:
    """The fields docs/gateway.md says a call has in tool_calls_requested / approval_requested."""
    line = DOC.read_text().split("A call is\n`{", 1)[1].split("}`", 1)[0]
    return {name.strip() for name in line.split(",")}


async def test_a_client_tool_round_trip_over_sse_and_http(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {_owner_token(stack)}"}
    base = f"http://127.0.0.1:{stack.http_port}"
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        session = await _session(client, _tool("ask_user"))
        sent = await client.post(
            f"/v1/sessions/{session['id']}:sendMessage", json={"text": "weather in Bern?"}, headers=SSE
        )
        assert sent.status_code == 200 and sent.headers["content-type"].startswith("text/event-stream")
        first = sse_events(sent.text)
        pause = first[-1]
        # The stream ended at the pause: the run waits, nobody holds it.
        assert pause["data"]["type"] == "RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED", first
        [call] = pause["data"]["toolCalls"]
        assert (call["name"], call["id"], json.loads(call["argumentsJson"])) == (
            "ask_user",
            "call_1_0",
            {"text": "weather in Bern?"},
        )
        run_id = pause["data"]["runId"]
        waiting = (await client.get(f"/v1/runs/{run_id}")).json()["run"]
        assert waiting["state"] == "RUN_STATE_REQUIRES_ACTION"
        assert [c["id"] for c in waiting["pendingToolCalls"]] == ["call_1_0"]

        # An unknown call id is refused with the field named, and nothing is answered.
        bad = await client.post(
            f"/v1/runs/{run_id}:submitToolOutputs",
            json={"outputs": [{"toolCallId": "call_9_9", "output": "x"}]},
        )
        assert bad.status_code == 400, bad.text
        assert "outputs[0].tool_call_id" in bad.text
        answered = await client.post(
            f"/v1/runs/{run_id}:submitToolOutputs",
            json={"outputs": [{"toolCallId": "call_1_0", "output": '{"temp": 21}'}]},
        )
        assert answered.status_code == 200, answered.text

        joined = await client.get(f"/v1/runs/{run_id}:join", headers={**SSE, "Last-Event-ID": pause["id"]})
        rest = sse_events(joined.text)
        ids = [int(e["id"]) for e in first + rest]
        assert ids == list(range(1, len(ids) + 1))  # no gap, no repeat across the pause
        assert rest[-1]["data"]["type"] == "RUN_EVENT_TYPE_RUN_COMPLETED", rest
        final = next(e for e in rest if e["data"]["type"] == "RUN_EVENT_TYPE_MESSAGE_COMPLETED")
        assert final["data"]["finalMessage"] == 'Tool results: {"temp": 21}'

        history = await _history(client, session["conversationId"])
    assert [m["role"] for m in history] == [
        "MESSAGE_ROLE_USER",
        "MESSAGE_ROLE_ASSISTANT",
        "MESSAGE_ROLE_TOOL",
        "MESSAGE_ROLE_ASSISTANT",
    ]
    assert history[2]["content"] == '{"temp": 21}'
    assert history[3]["content"] == 'Tool results: {"temp": 21}'
    _coherent(history)


async def test_an_approval_round_trip_over_http(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {_owner_token(stack)}"}
    base = f"http://127.0.0.1:{stack.http_port}"
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        session = await _session(
            client, _tool("send_mail", approval=True), _tool("delete_all", approval=True)
        )
        sent = await client.post(
            f"/v1/sessions/{session['id']}:sendMessage", json={"text": "tidy up"}, headers=SSE
        )
        pause = sse_events(sent.text)[-1]
        assert pause["data"]["type"] == "RUN_EVENT_TYPE_APPROVAL_REQUESTED"
        run_id = pause["data"]["runId"]
        assert [c["name"] for c in pause["data"]["toolCalls"]] == ["send_mail", "delete_all"]

        # A decision that is none of approve / deny / edit is refused, naming the field.
        bad = await client.post(
            f"/v1/runs/{run_id}:decideToolCalls", json={"decisions": [{"toolCallId": "call_1_0"}]}
        )
        assert bad.status_code == 400 and "decisions[0].approve" in bad.text, bad.text
        decided = await client.post(
            f"/v1/runs/{run_id}:decideToolCalls",
            json={
                "decisions": [
                    {"toolCallId": "call_1_0", "approve": True},
                    {"toolCallId": "call_1_1", "denyReason": "never"},
                ]
            },
        )
        assert decided.status_code == 200, decided.text
        # The approved client call now waits for its output: the join ends at the next pause.
        joined = sse_events(
            (await client.get(f"/v1/runs/{run_id}:join", headers={**SSE, "Last-Event-ID": pause["id"]})).text
        )
        asked = joined[-1]
        assert asked["data"]["type"] == "RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED", joined
        assert [c["id"] for c in asked["data"]["toolCalls"]] == ["call_1_0"]
        answered = await client.post(
            f"/v1/runs/{run_id}:submitToolOutputs",
            json={"outputs": [{"toolCallId": "call_1_0", "output": '"sent"'}]},
        )
        assert answered.status_code == 200, answered.text
        rest = sse_events(
            (await client.get(f"/v1/runs/{run_id}:join", headers={**SSE, "Last-Event-ID": asked["id"]})).text
        )
        assert rest[-1]["data"]["type"] == "RUN_EVENT_TYPE_RUN_COMPLETED", rest
        history = await _history(client, session["conversationId"])
    assert history[-1]["content"] == 'Tool results: "sent"; the call was denied: never'
    _coherent(history)


async def _recv(ws: Any) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 15))
    return frame


async def _until(ws: Any, *events: str) -> list[dict[str, Any]]:
    """Frames up to and including the first whose `type` or `event` is one of `events`."""
    seen = []
    while True:
        frame = await _recv(ws)
        assert frame["type"] != "error", frame
        seen.append(frame)
        if frame["type"] in events or frame.get("event") in events:
            return seen


async def test_client_tools_and_approvals_over_the_websocket_with_the_documented_frames(stack: Stack) -> None:
    token = _owner_token(stack)
    documented = _documented_frames()
    assert set(documented) == {"tool_outputs", "tool_decisions"}
    base = f"http://127.0.0.1:{stack.http_port}"
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        # Two client tools: echo:tools calls both (call_1_0, call_1_1), as the documented frame answers.
        outputs_session = await _session(client, _tool("locate"), _tool("gps"))
        # Three that need approval: the documented decisions approve, deny and edit them.
        decisions_session = await _session(
            client,
            _tool("first", approval=True),
            _tool("second", approval=True),
            _tool("third", approval=True),
        )
        async with connect(f"ws://127.0.0.1:{stack.http_port}/v1/ws") as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            assert (await _recv(ws))["event"] == "connected"

            await ws.send(
                json.dumps(
                    {"type": "chat_message", "session_id": outputs_session["id"], "content": "where am I"}
                )
            )
            asked = (await _until(ws, "tool_calls_requested"))[-1]
            assert [c["id"] for c in asked["tool_calls"]] == ["call_1_0", "call_1_1"]
            for call in asked["tool_calls"]:
                assert set(call) >= _documented_call_fields(), call
                assert call["status"] == "awaiting_output" and call["execution"] == "client"
            frame = {**documented["tool_outputs"], "run_id": asked["run_id"]}  # as docs/gateway.md writes it
            await ws.send(json.dumps(frame))
            # No new stream, no join: the rest of the run follows on the same socket.
            rest = await _until(ws, "run_completed", "run_failed")
            assert rest[-1]["event"] == "run_completed", rest
            final = next(f["final"] for f in rest if "final" in f)
            assert final == 'Tool results: {"temp": 21}; no GPS'
            first_id = asked["event_id"] + 1
            assert [f["event_id"] for f in rest] == list(range(first_id, first_id + len(rest)))

            await ws.send(
                json.dumps({"type": "chat_message", "session_id": decisions_session["id"], "content": "go"})
            )
            approval = (await _until(ws, "approval_requested"))[-1]
            assert [c["status"] for c in approval["tool_calls"]] == ["awaiting_approval"] * 3
            await ws.send(json.dumps({**documented["tool_decisions"], "run_id": approval["run_id"]}))
            # Approved and edited calls are client calls: they now wait for their outputs.
            outputs_asked = (await _until(ws, "tool_calls_requested"))[-1]
            arguments = {c["id"]: json.loads(c["arguments_json"]) for c in outputs_asked["tool_calls"]}
            assert arguments == {"call_1_0": {"text": "go"}, "call_1_2": {"city": "Paris"}}
            await ws.send(
                json.dumps(
                    {
                        "type": "tool_outputs",
                        "run_id": approval["run_id"],
                        "outputs": [
                            {"tool_call_id": "call_1_0", "output": "one"},
                            {"tool_call_id": "call_1_2", "output": "three"},
                        ],
                    }
                )
            )
            done = await _until(ws, "run_completed", "run_failed")
            assert done[-1]["event"] == "run_completed", done
            assert next(f["final"] for f in done if "final" in f) == (
                "Tool results: one; the call was denied: not this one; three"
            )
        for session in (outputs_session, decisions_session):
            _coherent(await _history(client, session["conversationId"]))
