"""The chat WebSocket on a real uvicorn port: auth, protocol, bad frames, limits and resume."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as orch_pb
from gateway.websocket import Limits, reply_message, tool_decisions_request, tool_outputs_request

RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def detail(error: dict[str, Any], type_url: str) -> dict[str, Any]:
    found = [d for d in error["details"] if d["@type"] == type_url]
    assert found, (type_url, error)
    return found[0]


async def recv(ws: Any) -> dict[str, Any]:
    # A message that never comes fails the test instead of hanging it.
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def until(ws: Any, predicate: Any) -> list[dict[str, Any]]:
    """Messages up to and including the first one `predicate` accepts."""
    seen = []
    while True:
        message = await recv(ws)
        seen.append(message)
        if predicate(message):
            return seen


def finished(m: dict[str, Any]) -> bool:
    return m.get("event") in ("run_completed", "run_failed", "run_cancelled")


async def session_id(fakes: Any) -> str:
    n = len(fakes.orchestration.sessions) + 1
    from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb

    fakes.orchestration.sessions[f"s{n}"] = pb.Session(id=f"s{n}", conversation_id=f"c{n}")
    return f"s{n}"


async def open_socket(port: int, token: str) -> Any:
    ws = await connect(f"ws://127.0.0.1:{port}/v1/ws")
    await ws.send(json.dumps({"type": "auth", "token": token}))
    assert (await recv(ws))["event"] == "connected"
    return ws


async def test_chat_streams_deltas_and_final(live: Any, token: str, fakes: Any) -> None:
    port = await live()
    session = await session_id(fakes)
    async with await open_socket(port, token) as ws:
        await ws.send(json.dumps({"type": "chat_message", "session_id": session, "content": "hello there"}))
        messages = await until(ws, finished)
    deltas = [m["delta"] for m in messages if m["type"] == "agent_response" and "delta" in m]
    final = next(m["final"] for m in messages if "final" in m)
    assert "".join(deltas) == final == "echo: hello there"
    assert [m["event_id"] for m in messages] == list(range(1, len(messages) + 1))
    assert messages[0] == {
        "type": "system_event",
        "event": "run_created",
        "run_id": messages[0]["run_id"],
        "event_id": 1,
        "session_id": session,
    }
    assert messages[-1]["event"] == "run_completed" and messages[-1]["usage"]["completion_tokens"] == 4


async def test_token_as_subprotocol_is_accepted_and_not_echoed(live: Any, token: str) -> None:
    port = await live()
    async with connect(
        f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["agentmesh.v1", f"bearer.{token}"]
    ) as ws:
        assert ws.subprotocol == "agentmesh.v1"
        assert (await recv(ws))["event"] == "connected"
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}


@pytest.mark.parametrize("first", ['{"type": "auth", "token": "garbage"}', "not json", '{"type": "ping"}'])
async def test_bad_auth_closes_4401(live: Any, first: str) -> None:
    port = await live()
    async with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        await ws.send(first)
        error = await recv(ws)
        assert error["type"] == "error" and error["error_code"] == "UNAUTHENTICATED"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 4401


async def test_bad_frames_get_errors_and_the_socket_stays_usable(live: Any, token: str, fakes: Any) -> None:
    port = await live()
    session = await session_id(fakes)
    async with await open_socket(port, token) as ws:
        for frame, field in [
            ("{oops", "frame"),
            ("[1]", "type"),
            ('{"type": "dance"}', "type"),
            ('{"type": "chat_message", "session_id": 5}', "session_id"),
            ('{"type": "chat_message", "session_id": "x", "content": "", "request_id": "q1"}', "content"),
            ('{"type": "resume", "run_id": "r", "session_id": "s", "after_event_id": -1}', "after_event_id"),
            ('{"type": "cancel"}', "session_id"),
        ]:
            await ws.send(frame)
            error = await recv(ws)
            assert error["type"] == "error" and error["error_code"] == "INVALID_ARGUMENT", (frame, error)
            assert [v["field"] for v in detail(error, BAD_REQUEST)["fieldViolations"]] == [field]
            assert error.get("request_id") == ("q1" if "q1" in frame else None)
        await ws.send(json.dumps({"type": "chat_message", "session_id": "missing", "content": "x"}))
        assert (await recv(ws))["error_code"] == "NOT_FOUND"
        await ws.send(json.dumps({"type": "chat_message", "session_id": session, "content": "still works"}))
        messages = await until(ws, finished)
        assert messages[-1]["event"] == "run_completed"


async def test_rejected_messages_are_errors_with_the_upstream_status(
    live: Any, token: str, fakes: Any
) -> None:
    """Orchestration answers a rejected action in the Chat stream; the socket stays usable."""
    fakes.orchestration.delay = 0.02
    port = await live()
    session = await session_id(fakes)
    async with await open_socket(port, token) as ws:
        chat = {"type": "chat_message", "session_id": session}
        await ws.send(json.dumps({**chat, "content": "flood", "request_id": "m-flood"}))
        error = await recv(ws)
        assert error["error_code"] == "RESOURCE_EXHAUSTED" and error["request_id"] == "m-flood"
        assert error["retry_after"] == 2 and detail(error, RETRY_INFO)["retryDelay"] == "1.500s"

        await ws.send(json.dumps({**chat, "content": " ".join(["x"] * 50), "request_id": "m-long"}))
        await until(ws, lambda m: "delta" in m)
        await ws.send(json.dumps({**chat, "content": "me too", "request_id": "m-busy"}))
        seen = await until(ws, lambda m: m["type"] == "error")
        busy = seen[-1]
        assert busy["error_code"] == "FAILED_PRECONDITION" and busy["request_id"] == "m-busy"
        info = detail(busy, "type.googleapis.com/google.rpc.ErrorInfo")
        assert info["reason"] == "SESSION_BUSY"
        assert detail(busy, "type.googleapis.com/google.rpc.PreconditionFailure")["violations"]
        rest = await until(ws, finished)
        assert rest[-1]["event"] == "run_completed"
        assert all(m.get("event") != "unknown" for m in seen + rest)


def test_chat_response_from_an_older_orchestration_still_maps() -> None:
    """During a rolling upgrade an old orchestration sets the deprecated event/error fields."""
    legacy_error = orch_pb.ChatResponse(
        error=orch_pb.RunError(code="FAILED_PRECONDITION", message="busy"), request_id="m1"
    )
    assert reply_message(legacy_error) == {
        "type": "error",
        "error_code": "FAILED_PRECONDITION",
        "error_message": "busy",
        "details": [],
        "request_id": "m1",
    }
    legacy_event = orch_pb.ChatResponse(
        event=orch_pb.RunEvent(run_id="r", event_id=1, type=orch_pb.RUN_EVENT_TYPE_RUN_CREATED)
    )
    assert reply_message(legacy_event)["event"] == "run_created"


async def test_message_flood_is_rate_limited_per_connection(live: Any, token: str) -> None:
    port = await live(limits=Limits(messages_per_minute=3))
    async with await open_socket(port, token) as ws:
        for _ in range(3):
            await ws.send(json.dumps({"type": "cancel", "session_id": "s"}))
        await ws.send(json.dumps({"type": "cancel", "session_id": "s"}))
        errors = [await recv(ws) for _ in range(1)]
        flood = [e for e in errors if e.get("error_code") == "RESOURCE_EXHAUSTED"]
        assert flood and 0 < flood[0]["retry_after"] <= 60
        assert detail(flood[0], RETRY_INFO)
        await ws.send(json.dumps({"type": "ping"}))  # heartbeats are never limited
        assert await recv(ws) == {"type": "pong"}


async def test_oversized_frame_closes_1009(live: Any, token: str) -> None:
    port = await live(limits=Limits(max_frame_bytes=100))
    async with await open_socket(port, token) as ws:
        await ws.send(json.dumps({"type": "chat_message", "session_id": "s", "content": "x" * 500}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1009


async def test_connections_per_user_and_total(live: Any, keys: Any) -> None:
    port = await live(limits=Limits(connections_per_user=1, max_connections=2))
    a = keys.token(tenant="demo", sub="user_1")
    b = keys.token(tenant="demo", sub="user_2")
    async with await open_socket(port, a):
        async with connect(f"ws://127.0.0.1:{port}/v1/ws") as second:
            await second.send(json.dumps({"type": "auth", "token": a}))
            assert (await recv(second))["error_code"] == "RESOURCE_EXHAUSTED"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await second.recv()
            assert closed.value.rcvd.code == 4429
        async with await open_socket(port, b):
            with pytest.raises(websockets.InvalidStatus):  # full: refused before the upgrade
                async with connect(f"ws://127.0.0.1:{port}/v1/ws"):
                    pass


async def test_resume_after_dropped_socket_has_no_gap_and_no_duplicate(
    live: Any, token: str, fakes: Any
) -> None:
    fakes.orchestration.delay = 0.01
    port = await live()
    session = await session_id(fakes)
    words = " ".join(f"w{i}" for i in range(12))
    async with await open_socket(port, token) as ws:
        await ws.send(json.dumps({"type": "chat_message", "session_id": session, "content": words}))
        before = await until(ws, lambda m: m.get("event_id") == 5)
    # The socket is gone; the run goes on. A new socket resumes after the last event seen.
    run_id = before[0]["run_id"]
    async with await open_socket(port, token) as ws:
        await ws.send(
            json.dumps({"type": "resume", "session_id": session, "run_id": run_id, "after_event_id": 5})
        )
        after = await until(ws, finished)
    ids = [m["event_id"] for m in before + after]
    assert ids == list(range(1, len(ids) + 1))
    text = "".join(m.get("delta", "") for m in before + after)
    assert text == "echo: " + words
    assert fakes.orchestration.runs[run_id].cancelled is False


async def test_cancel_stops_the_run(live: Any, token: str, fakes: Any) -> None:
    fakes.orchestration.delay = 0.02
    port = await live()
    session = await session_id(fakes)
    async with await open_socket(port, token) as ws:
        await ws.send(
            json.dumps({"type": "chat_message", "session_id": session, "content": " ".join(["x"] * 200)})
        )
        first = await until(ws, lambda m: "delta" in m)
        await ws.send(json.dumps({"type": "cancel", "run_id": first[-1]["run_id"]}))
        rest = await until(ws, finished)
    assert rest[-1]["event"] == "run_cancelled"
    assert len([m for m in first + rest if "delta" in m]) < 200


def _call(**fields: Any) -> orch_pb.ToolCall:
    return orch_pb.ToolCall(id="call_1_0", name="lookup", arguments_json='{"text": "hi"}', step=1, **fields)


def test_tool_events_map_to_their_frames() -> None:
    def event(type_: int, *calls: orch_pb.ToolCall) -> dict[str, Any]:
        run_event = orch_pb.RunEvent(run_id="r", event_id=4, session_id="s", type=type_, tool_calls=calls)
        return reply_message(orch_pb.ChatResponse(run_event=run_event))

    waiting = _call(
        status=orch_pb.TOOL_CALL_STATUS_AWAITING_OUTPUT, execution=agents_pb.TOOL_EXECUTION_CLIENT
    )
    assert event(orch_pb.RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED, waiting) == {
        "type": "tool_calls_requested",
        "run_id": "r",
        "event_id": 4,
        "session_id": "s",
        "tool_calls": [
            {
                "id": "call_1_0",
                "name": "lookup",
                "arguments_json": '{"text": "hi"}',
                "status": "awaiting_output",
                "output": "",
                "is_error": False,
                "duration_ms": 0,
                "requires_approval": False,
                "execution": "client",
                "step": 1,
            }
        ],
    }
    approval = _call(status=orch_pb.TOOL_CALL_STATUS_AWAITING_APPROVAL, requires_approval=True)
    asked = event(orch_pb.RUN_EVENT_TYPE_APPROVAL_REQUESTED, approval)
    assert asked["type"] == "approval_requested"
    assert asked["tool_calls"][0]["requires_approval"] is True
    assert asked["tool_calls"][0]["status"] == "awaiting_approval"
    running = _call(status=orch_pb.TOOL_CALL_STATUS_RUNNING, execution=agents_pb.TOOL_EXECUTION_HTTP)
    started = event(orch_pb.RUN_EVENT_TYPE_TOOL_CALL_STARTED, running)
    assert started["type"] == "tool_call" and started["status"] == "started"
    assert started["tool_call"]["execution"] == "http"
    done = _call(status=orch_pb.TOOL_CALL_STATUS_COMPLETED, output="boom", is_error=True, duration_ms=12)
    completed = event(orch_pb.RUN_EVENT_TYPE_TOOL_CALL_COMPLETED, done)
    assert completed["status"] == "completed"
    assert completed["tool_call"]["output"] == "boom" and completed["tool_call"]["is_error"] is True
    assert completed["tool_call"]["duration_ms"] == 12


def test_tool_frames_map_to_chat_actions() -> None:
    outputs = tool_outputs_request(
        {
            "run_id": "r",
            "outputs": [
                {"tool_call_id": "a", "output": "42"},
                {"tool_call_id": "b", "output": "no", "is_error": True},
            ],
        }
    )
    assert outputs == orch_pb.SubmitToolOutputsRequest(
        run_id="r",
        outputs=[
            orch_pb.ToolOutput(tool_call_id="a", output="42"),
            orch_pb.ToolOutput(tool_call_id="b", output="no", is_error=True),
        ],
    )
    decisions = tool_decisions_request(
        {
            "run_id": "r",
            "decisions": [
                {"tool_call_id": "a", "approve": True},
                {"tool_call_id": "b", "deny_reason": "not today"},
                {"tool_call_id": "c", "edited_arguments": {"text": "safer"}},
                {"tool_call_id": "d", "edited_arguments_json": '{"text": "raw"}'},
            ],
        }
    )
    assert decisions == orch_pb.DecideToolCallsRequest(
        run_id="r",
        decisions=[
            orch_pb.ToolDecision(tool_call_id="a", approve=True),
            orch_pb.ToolDecision(tool_call_id="b", deny_reason="not today"),
            orch_pb.ToolDecision(tool_call_id="c", edited_arguments_json='{"text":"safer"}'),
            orch_pb.ToolDecision(tool_call_id="d", edited_arguments_json='{"text": "raw"}'),
        ],
    )


async def test_bad_tool_frames_are_named_by_field_and_run(live: Any, token: str) -> None:
    port = await live()
    async with await open_socket(port, token) as ws:
        for frame, field in [
            ({"type": "tool_outputs", "run_id": "r", "session_id": "s"}, "outputs"),
            ({"type": "tool_outputs", "run_id": "r", "session_id": "s", "outputs": [3]}, "outputs[0]"),
            (
                {"type": "tool_outputs", "run_id": "r", "session_id": "s", "outputs": [{"output": "x"}]},
                "outputs[0].tool_call_id",
            ),
            (
                {"type": "tool_outputs", "run_id": "r", "outputs": [{"tool_call_id": "a"}]},
                "session_id",
            ),
            (
                {
                    "type": "tool_decisions",
                    "run_id": "r",
                    "session_id": "s",
                    "decisions": [{"tool_call_id": "a"}],
                },
                "decisions[0]",
            ),
            (
                {
                    "type": "tool_decisions",
                    "run_id": "r",
                    "session_id": "s",
                    "decisions": [{"tool_call_id": "a", "approve": False}],
                },
                "decisions[0].approve",
            ),
            (
                {
                    "type": "tool_decisions",
                    "run_id": "r",
                    "session_id": "s",
                    "decisions": [{"tool_call_id": "a", "edited_arguments": [1]}],
                },
                "decisions[0].edited_arguments",
            ),
        ]:
            await ws.send(json.dumps(frame))
            error = await recv(ws)
            assert error["error_code"] == "INVALID_ARGUMENT", (frame, error)
            assert [v["field"] for v in detail(error, BAD_REQUEST)["fieldViolations"]] == [field]
            assert error["request_id"] == "r"
