"""The whole story on production processes (one per service, plus the gateway), twice: through the
gateway (JSON, WebSocket, SSE with resume) and through the generated gRPC stubs; and one trace per
user request, read from the processes' span files."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
import websockets

from tests.helpers import bearer
from tests.system.clients import (
    PASSWORD,
    Stubs,
    agents_pb,
    conv_pb,
    echo_agent,
    orch_pb,
    sign_up,
    sse_events,
)
from tests.system.cluster import Cluster
from tests.system.conftest import unique

_T = orch_pb.RunEventType


@pytest.fixture
async def http(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster["gateway"].url, timeout=30) as client:
        yield client


@pytest.fixture
async def stubs(cluster: Cluster) -> AsyncIterator[Stubs]:
    names = ("identity", "agents", "conversation", "orchestration")
    channels = {n: grpc.aio.insecure_channel(cluster[n].address) for n in names}
    yield Stubs.on(channels)
    for channel in channels.values():
        await channel.close()


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


async def ws_chat(cluster: Cluster, token: str, session_id: str, text: str) -> list[dict[str, Any]]:
    """Sends one chat message over /v1/ws; the frames of its run up to the terminal event."""
    url = cluster["gateway"].url.replace("http://", "ws://") + "/v1/ws"
    frames: list[dict[str, Any]] = []
    async with websockets.connect(url, subprotocols=["agentmesh.v1", f"bearer.{token}"]) as ws:
        assert ws.subprotocol == "agentmesh.v1"
        await ws.send(json.dumps({"type": "chat_message", "session_id": session_id, "content": text}))
        async with asyncio.timeout(30):
            while True:
                frame = json.loads(await ws.recv())
                assert frame["type"] != "error", frame
                frames.append(frame)
                if frame["type"] == "system_event" and frame["event"] in (
                    "run_completed",
                    "run_failed",
                    "run_cancelled",
                ):
                    return frames


async def test_story_through_the_gateway(cluster: Cluster, http: httpx.AsyncClient) -> None:
    tenant = unique("gw")
    signed = ok(
        await http.post(
            "/v1/identity:signUp", json={"tenantName": tenant, "username": "owner", "password": PASSWORD}
        )
    )
    token = signed["tokens"]["accessToken"]
    auth = {"Authorization": f"Bearer {token}"}
    assert ok(await http.get("/v1/identity/me", headers=auth))["tenant"]["name"] == tenant

    body = {"agent": {"displayName": "Helper", "config": {"model": "echo:default", "systemPrompt": "Hi"}}}
    agent = ok(await http.post("/v1/agents", json=body, headers=auth))["agent"]
    updated = ok(
        await http.patch(
            f"/v1/agents/{agent['id']}?updateMask=displayName", json={"displayName": "Helper 2"}, headers=auth
        )
    )["agent"]
    assert (updated["displayName"], updated["version"]) == ("Helper 2", "2")

    session = ok(await http.post("/v1/sessions", json={"agentId": agent["id"]}, headers=auth))["session"]

    frames = await ws_chat(cluster, token, session["id"], "hello over websocket")
    assert frames[-1]["event"] == "run_completed", frames
    finals = [f["final"] for f in frames if f["type"] == "agent_response" and "final" in f]
    assert finals == ["Echo: hello over websocket"]

    # SSE: read the start of the answer, drop the connection, resume with Last-Event-ID.
    first: list[tuple[int, dict[str, Any]]] = []
    async with http.stream(
        "POST",
        f"/v1/sessions/{session['id']}:sendMessage",
        json={"text": "hello over server sent events"},
        headers={**auth, "Accept": "text/event-stream"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event_id, kind, data in sse_events(response):
            assert kind is None, data
            first.append((int(event_id or 0), data))
            if len(first) == 2:
                break
    run_id = first[0][1]["runId"]
    last_seen = first[-1][0]
    rest: list[tuple[int, dict[str, Any]]] = []
    async with http.stream(
        "GET",
        f"/v1/runs/{run_id}:join",
        headers={**auth, "Accept": "text/event-stream", "Last-Event-ID": str(last_seen)},
    ) as response:
        assert response.status_code == 200
        async for event_id, kind, data in sse_events(response):
            assert kind is None, data
            rest.append((int(event_id or 0), data))
    ids = [i for i, _ in first + rest]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "resume skipped or repeated events"
    assert rest[-1][1]["type"] == "RUN_EVENT_TYPE_RUN_COMPLETED"
    text = "".join(d.get("textDelta", "") for _, d in first + rest)
    assert text == "Echo: hello over server sent events"

    conversation = session["conversationId"]
    messages = ok(await http.get(f"/v1/conversations/{conversation}/messages", headers=auth))["messages"]
    assert [m["content"] for m in messages] == [
        "hello over websocket",
        "Echo: hello over websocket",
        "hello over server sent events",
        "Echo: hello over server sent events",
    ]
    found = ok(await http.get("/v1/conversations:search?query=websocket", headers=auth))["results"]
    assert {r["conversation"]["id"] for r in found} == {conversation}
    stats = ok(await http.get("/v1/conversationStats", headers=auth))
    assert (stats["totals"]["conversations"], stats["totals"]["messages"]) == ("1", "4")


async def test_story_through_grpc_stubs(stubs: Stubs) -> None:
    signed = await sign_up(stubs.identity, unique("grpc"))
    md = bearer(signed.tokens.access_token)
    created = await stubs.agents.CreateAgent(
        agents_pb.CreateAgentRequest(agent=echo_agent("Stub agent")), metadata=md, timeout=10
    )
    agent = created.agent
    updated = await stubs.agents.UpdateAgent(
        agents_pb.UpdateAgentRequest(
            agent=agents_pb.Agent(id=agent.id, description="answers in kind"),
            update_mask={"paths": ["description"]},
        ),
        metadata=md,
        timeout=10,
    )
    assert (updated.agent.version, updated.agent.description) == (2, "answers in kind")
    session = (
        await stubs.orchestration.StartSession(
            orch_pb.StartSessionRequest(agent_id=agent.id), metadata=md, timeout=10
        )
    ).session

    # Chat (bidirectional): one message, its events up to the end of the run.
    chat = stubs.orchestration.Chat(metadata=md, timeout=30)
    await chat.write(
        orch_pb.ChatRequest(session_id=session.id, message=orch_pb.ChatMessage(text="first over chat"))
    )
    chat_events = []
    async for reply in chat:
        assert reply.WhichOneof("payload") == "run_event", reply
        chat_events.append(reply.run_event)
        if reply.run_event.type == _T.RUN_EVENT_TYPE_RUN_COMPLETED:
            break
    chat.cancel()
    assert [e.final_message for e in chat_events if e.final_message] == ["Echo: first over chat"]

    # SendMessage: stop after the first two events, then JoinRun from the last one seen.
    stream = stubs.orchestration.SendMessage(
        orch_pb.SendMessageRequest(session_id=session.id, text="second over send message"),
        metadata=md,
        timeout=30,
    )
    head = []
    async for reply in stream:
        head.append(reply.event)
        if len(head) == 2:
            break
    stream.cancel()
    joined = [
        r.event
        async for r in stubs.orchestration.JoinRun(
            orch_pb.JoinRunRequest(run_id=head[0].run_id, after_event_id=head[-1].event_id),
            metadata=md,
            timeout=30,
        )
    ]
    events = head + joined
    assert [e.event_id for e in events] == list(range(events[0].event_id, events[0].event_id + len(events)))
    assert events[-1].type == _T.RUN_EVENT_TYPE_RUN_COMPLETED
    assert "".join(e.text_delta for e in events) == "Echo: second over send message"
    run = (
        await stubs.orchestration.GetRun(
            orch_pb.GetRunRequest(run_id=head[0].run_id), metadata=md, timeout=10
        )
    ).run
    assert run.state == orch_pb.RUN_STATE_COMPLETED

    history = await stubs.conversation.ListMessages(
        conv_pb.ListMessagesRequest(conversation_id=session.conversation_id), metadata=md, timeout=10
    )
    assert [m.content for m in history.messages] == [
        "first over chat",
        "Echo: first over chat",
        "second over send message",
        "Echo: second over send message",
    ]
    found = await stubs.conversation.SearchConversations(
        conv_pb.SearchConversationsRequest(query="message"), metadata=md, timeout=10
    )
    assert {r.conversation.id for r in found.results} == {session.conversation_id}
    stats = await stubs.conversation.GetTenantStats(conv_pb.GetTenantStatsRequest(), metadata=md, timeout=10)
    assert (stats.totals.conversations, stats.totals.messages) == (1, 4)
    assert [a.agent_id for a in stats.by_agent] == [agent.id]


# Tracing ------------------------------------------------------------------------------------------


async def _trace(cluster: Cluster, trace_id: str, expect: set[str]) -> list[dict[str, Any]]:
    """The spans of `trace_id`, once spans of every process in `expect` are written."""
    async with asyncio.timeout(20):
        while True:
            spans = [s for s in cluster.spans() if s["trace_id"] == trace_id]
            seen = {s["service.name"] for s in spans}
            # The gateway's server span ends last (after the streamed response), so wait for it too.
            roots = [s for s in spans if s["service.name"] == "agentmesh-gateway" and s["kind"] == "SERVER"]
            if expect <= seen and roots:
                return spans
            await asyncio.sleep(0.1)


def _assert_linked(spans: list[dict[str, Any]]) -> None:
    """One root (the gateway's server span); every other span's parent is in the trace; every server
    span's parent is a client span of another process, whose own parent is in the caller's process."""
    by_id = {s["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent_span_id"] not in by_id]
    assert len(roots) == 1, roots
    root = roots[0]
    assert (root["service.name"], root["kind"]) == ("agentmesh-gateway", "SERVER")
    for span in spans:
        if span is root:
            continue
        parent = by_id[span["parent_span_id"]]
        if span["kind"] == "SERVER":
            assert parent["kind"] == "CLIENT", (span, parent)
            assert parent["service.name"] != span["service.name"], (span, parent)
        elif span["kind"] == "CLIENT":
            assert parent["service.name"] == span["service.name"], (span, parent)


def _hops(spans: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(caller service, callee service, method) of every server span."""
    by_id = {s["span_id"]: s for s in spans}
    return {
        (by_id[s["parent_span_id"]]["service.name"], s["service.name"], s["name"].rsplit("/", 1)[-1])
        for s in spans
        if s["kind"] == "SERVER" and s["parent_span_id"] in by_id
    }


async def test_one_trace_per_request(cluster: Cluster, http: httpx.AsyncClient) -> None:
    """Every process exports to its own span file. The agent is created while orchestration is down,
    so orchestration has not seen it and must ask agents (its cache only fills from WatchAgents)."""
    signed = ok(
        await http.post(
            "/v1/identity:signUp",
            json={"tenantName": unique("trace"), "username": "owner", "password": PASSWORD},
        )
    )
    auth = {"Authorization": "Bearer " + signed["tokens"]["accessToken"]}
    assert await asyncio.to_thread(cluster.stop, "orchestration") == 0
    body = {"agent": {"displayName": "Traced", "config": {"model": "echo:default"}}}
    agent = ok(await http.post("/v1/agents", json=body, headers=auth))["agent"]
    await asyncio.to_thread(cluster.start, "orchestration")

    start_trace = os.urandom(16).hex()
    session = ok(
        await http.post(
            "/v1/sessions",
            json={"agentId": agent["id"]},
            headers={**auth, "traceparent": f"00-{start_trace}-{os.urandom(8).hex()}-01"},
        )
    )["session"]
    send_trace = os.urandom(16).hex()
    async with http.stream(
        "POST",
        f"/v1/sessions/{session['id']}:sendMessage",
        json={"text": "trace me"},
        headers={**auth, "traceparent": f"00-{send_trace}-{os.urandom(8).hex()}-01"},
    ) as response:
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert lines[-1]["result"]["type"] == "RUN_EVENT_TYPE_RUN_COMPLETED", lines[-1]

    # The traceparent header names the caller's span (not exported): the gateway's span is the root.
    start_spans = await _trace(
        cluster, start_trace, {"agentmesh-gateway", "agentmesh-orchestration", "agentmesh-agents"}
    )
    _assert_linked(start_spans)
    assert {
        ("agentmesh-gateway", "agentmesh-orchestration", "StartSession"),
        ("agentmesh-orchestration", "agentmesh-agents", "GetAgent"),
        ("agentmesh-orchestration", "agentmesh-conversation", "CreateConversation"),
    } <= _hops(start_spans)

    send_spans = await _trace(
        cluster, send_trace, {"agentmesh-gateway", "agentmesh-orchestration", "agentmesh-conversation"}
    )
    _assert_linked(send_spans)
    hops = _hops(send_spans)
    assert {
        ("agentmesh-gateway", "agentmesh-orchestration", "SendMessage"),
        ("agentmesh-orchestration", "agentmesh-conversation", "AppendMessage"),
        ("agentmesh-orchestration", "agentmesh-conversation", "GetContext"),
    } <= hops
