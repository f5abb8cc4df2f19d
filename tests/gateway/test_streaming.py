"""Server streams as SSE and NDJSON, and SSE resume through JoinRun with Last-Event-ID."""

from __future__ import annotations

import json
from typing import Any

import httpx


def sse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            fields[key] = value
        fields["data"] = json.loads(fields["data"])
        events.append(fields)
    return events


async def start_session(client: httpx.AsyncClient, auth: dict[str, str]) -> str:
    r = await client.post("/v1/sessions", json={"agentId": "agent-1"}, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()["session"]["id"]


async def test_send_message_as_ndjson_by_default(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    session = await start_session(client, auth)
    r = await client.post(
        f"/v1/sessions/{session}:sendMessage", json={"text": "hello big world"}, headers=auth
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line)["result"] for line in r.text.splitlines()]
    assert [e["eventId"] for e in events] == [str(i) for i in range(1, len(events) + 1)]
    deltas = "".join(e["textDelta"] for e in events if e["type"] == "RUN_EVENT_TYPE_MESSAGE_DELTA")
    assert deltas == "echo: hello big world"
    assert events[-1]["type"] == "RUN_EVENT_TYPE_RUN_COMPLETED"


async def test_send_message_as_sse_with_event_ids(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    session = await start_session(client, auth)
    r = await client.post(
        f"/v1/sessions/{session}:sendMessage",
        json={"text": "hi"},
        headers={**auth, "Accept": "text/event-stream"},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [e["id"] for e in events] == [e["data"]["eventId"] for e in events]
    assert events[0]["data"]["type"] == "RUN_EVENT_TYPE_RUN_CREATED"


async def test_stream_error_before_first_message_is_plain_http(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    r = await client.post(
        "/v1/sessions/nope:sendMessage", json={"text": "x"}, headers={**auth, "Accept": "text/event-stream"}
    )
    assert r.status_code == 404 and r.json()["status"] == "NOT_FOUND"
    session = await start_session(client, auth)
    r = await client.post(f"/v1/sessions/{session}:sendMessage", json={"text": "flood"}, headers=auth)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"


async def test_sse_resume_with_last_event_id_has_no_gap_and_no_duplicate(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    session = await start_session(client, auth)
    first = await client.post(
        f"/v1/sessions/{session}:sendMessage",
        json={"text": "one two three four five six"},
        headers={**auth, "Accept": "text/event-stream"},
    )
    all_events = sse_events(first.text)
    run_id = all_events[0]["data"]["runId"]
    for cut in (1, 3, len(all_events) - 1):
        seen = all_events[:cut]  # the connection dropped after `cut` events
        r = await client.get(
            f"/v1/runs/{run_id}:join",
            headers={**auth, "Accept": "text/event-stream", "Last-Event-ID": seen[-1]["id"]},
        )
        resumed = sse_events(r.text)
        ids = [int(e["id"]) for e in seen + resumed]
        assert ids == list(range(1, len(all_events) + 1))
        assert [e["data"] for e in seen + resumed] == [e["data"] for e in all_events]


async def test_join_after_query_parameter_and_bad_last_event_id(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    session = await start_session(client, auth)
    r = await client.post(f"/v1/sessions/{session}:sendMessage", json={"text": "a b"}, headers=auth)
    run_id = json.loads(r.text.splitlines()[0])["result"]["runId"]
    r = await client.get(f"/v1/runs/{run_id}:join?after_event_id=2", headers=auth)
    assert json.loads(r.text.splitlines()[0])["result"]["eventId"] == "3"
    r = await client.get(f"/v1/runs/{run_id}:join", headers={**auth, "Last-Event-ID": "abc"})
    assert r.status_code == 400
    r = await client.get(f"/v1/runs/{run_id}:join", headers={**auth, "Last-Event-ID": "999"})
    assert r.status_code == 400 and r.json()["status"] == "INVALID_ARGUMENT"


async def test_history_through_rest(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    r = await client.post("/v1/sessions", json={"agentId": "agent-1"}, headers=auth)
    session = r.json()["session"]
    await client.post(f"/v1/sessions/{session['id']}:sendMessage", json={"text": "remember me"}, headers=auth)
    r = await client.get(f"/v1/conversations/{session['conversationId']}/messages?pageSize=10", headers=auth)
    contents = [m["content"] for m in r.json()["messages"]]
    assert contents == ["remember me", "echo: remember me"]
