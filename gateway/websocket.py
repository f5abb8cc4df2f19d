"""The chat WebSocket at /v1/ws: a typed JSON protocol over OrchestrationService.Chat.

Client -> server: auth {token} (unless the token came as the `bearer.<token>` subprotocol),
chat_message {session_id, content, request_id?}, cancel {run_id?, session_id?},
resume {session_id, run_id, after_event_id}, tool_outputs {run_id, session_id?, outputs: [{tool_call_id,
output, is_error?}]}, tool_decisions {run_id, session_id?, decisions: [{tool_call_id, approve: true |
deny_reason | edited_arguments (object) | edited_arguments_json}]}, ping.
Server -> client: system_event {event: connected | run_created | run_started | run_completed |
run_failed | run_cancelled, run_id, event_id, ...}, agent_response {run_id, event_id, delta | final},
tool_calls_requested / approval_requested {run_id, event_id, tool_calls: [call]}, tool_call {status:
started | completed, run_id, event_id, tool_call: call}, error {error_code, error_message, details,
retry_after?, request_id?}, pong. A call is {id, name, arguments_json, status, output, is_error,
duration_ms, requires_approval, execution, step} (status and execution lower-case names).
Every error is a google.rpc.Status: error_code is the gRPC code name (INVALID_ARGUMENT,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ...), details its detail messages in JSON with their @type,
whether orchestration rejected an action or the gateway rejected the frame itself.

One upstream Chat stream per session the socket talks to; closing the socket cancels those streams
and nothing else (runs go on, and a new socket resumes them from the last event id it saw).
Close codes: 4401 authentication, 4429 too many connections for the user, 1013 gateway full,
1009 frame too large.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.identity.v1 import identity_service_pb2 as identity_pb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as orch_pb
from gateway import errors
from gateway.connection_slots import ConnectionSlots
from gateway.upstream import Spans, Tracing, Upstreams
from services.platform import errors as platform_errors
from services.platform import peers
from services.platform.settings import GatewaySettings

CHAT = "/agentmesh.orchestration.v1.OrchestrationService/Chat"
WHO_AM_I = "/agentmesh.identity.v1.IdentityService/WhoAmI"
PROTOCOL = "agentmesh.v1"
AUTH_TIMEOUT = 10.0

CLOSE_AUTH = 4401
CLOSE_RATE = 4429
CLOSE_FULL = 1013
CLOSE_TOO_BIG = 1009

_T = orch_pb.RunEventType
_ChatCall = peers.Replies[orch_pb.ChatRequest, orch_pb.ChatResponse]
_SYSTEM_EVENTS = {
    _T.RUN_EVENT_TYPE_RUN_CREATED: "run_created",
    _T.RUN_EVENT_TYPE_RUN_STARTED: "run_started",
    _T.RUN_EVENT_TYPE_RUN_COMPLETED: "run_completed",
    _T.RUN_EVENT_TYPE_RUN_FAILED: "run_failed",
    _T.RUN_EVENT_TYPE_RUN_CANCELLED: "run_cancelled",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    max_frame_bytes: int = 64 * 1024
    messages_per_minute: int = 60
    connections_per_user: int = 10
    max_connections: int = 10_000
    heartbeat_seconds: float = 20.0

    @classmethod
    def from_settings(cls, gateway: GatewaySettings) -> Limits:
        return cls(
            max_frame_bytes=gateway.ws_max_frame_bytes,
            messages_per_minute=gateway.ws_messages_per_minute,
            connections_per_user=gateway.ws_connections_per_user,
            max_connections=gateway.ws_max_connections,
            heartbeat_seconds=gateway.ws_heartbeat_seconds,
        )


_WAITS = {
    _T.RUN_EVENT_TYPE_TOOL_CALLS_REQUESTED: "tool_calls_requested",
    _T.RUN_EVENT_TYPE_APPROVAL_REQUESTED: "approval_requested",
}
_CALL_EVENTS = {
    _T.RUN_EVENT_TYPE_TOOL_CALL_STARTED: "started",
    _T.RUN_EVENT_TYPE_TOOL_CALL_COMPLETED: "completed",
}


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def tool_call_message(call: orch_pb.ToolCall) -> dict[str, Any]:
    """A ToolCall as the client sees it: every field, enums by their short lower-case name."""
    return {
        "id": call.id,
        "name": call.name,
        "arguments_json": call.arguments_json,
        "status": _enum_name(orch_pb.ToolCallStatus.Name(call.status), "TOOL_CALL_STATUS_"),
        "output": call.output,
        "is_error": call.is_error,
        "duration_ms": call.duration_ms,
        "requires_approval": call.requires_approval,
        "execution": _enum_name(agents_pb.ToolExecution.Name(call.execution), "TOOL_EXECUTION_"),
        "step": call.step,
    }


def event_message(event: orch_pb.RunEvent) -> dict[str, Any]:
    """The client message for one RunEvent."""
    base = {"run_id": event.run_id, "event_id": event.event_id, "session_id": event.session_id}
    if event.type == _T.RUN_EVENT_TYPE_MESSAGE_DELTA:
        return {"type": "agent_response", **base, "delta": event.text_delta}
    if event.type == _T.RUN_EVENT_TYPE_MESSAGE_COMPLETED:
        return {"type": "agent_response", **base, "final": event.final_message}
    if event.type in _WAITS:
        calls = [tool_call_message(c) for c in event.tool_calls]
        return {"type": _WAITS[event.type], **base, "tool_calls": calls}
    if event.type in _CALL_EVENTS and event.tool_calls:
        call = tool_call_message(event.tool_calls[0])
        return {"type": "tool_call", "status": _CALL_EVENTS[event.type], **base, "tool_call": call}
    out: dict[str, Any] = {"type": "system_event", "event": _SYSTEM_EVENTS.get(event.type, "unknown"), **base}
    if event.HasField("usage"):
        out["usage"] = json_format.MessageToDict(event.usage, preserving_proto_field_name=True)
    if event.HasField("error"):
        out["error"] = {"code": event.error.code, "message": event.error.message}
    return out


def error_of_status(status: status_pb2.Status, request_id: str = "") -> dict[str, Any]:
    """The client message for a google.rpc.Status; `request_id` names the action it answers."""
    out: dict[str, Any] = {
        "type": "error",
        "error_code": errors.code_name(status.code),
        "error_message": status.message,
        "details": errors.details_of(status),
    }
    delay = errors.retry_after(status)
    if delay is not None:
        out["retry_after"] = delay
    if request_id:
        out["request_id"] = request_id
    return out


def reply_message(reply: orch_pb.ChatResponse) -> dict[str, Any]:
    """The client message for one ChatResponse: a run event, or the error that rejected an action."""
    kind = reply.WhichOneof("payload")
    if kind == "run_event":
        return event_message(reply.run_event)
    if kind == "status":
        return error_of_status(reply.status, reply.request_id)
    # An orchestration older than the payload oneof (during a rolling upgrade) sets the old fields.
    if reply.HasField("error"):
        name = reply.error.code
        code = code_pb2.Code.Value(name) if name in code_pb2.Code.keys() else code_pb2.UNKNOWN
        return error_of_status(errors.simple_status(code, reply.error.message), reply.request_id)
    return event_message(reply.event)


def _unauthenticated(message: str) -> dict[str, Any]:
    return error_of_status(errors.simple_status(code_pb2.UNAUTHENTICATED, message))


class _Window:
    """At most `limit` frames in any 60 s; `retry_after()` is 0 when one more is allowed."""

    def __init__(self, limit: int, clock: Callable[[], float]):
        self._limit, self._clock, self._times = limit, clock, collections.deque[float]()

    def retry_after(self) -> float:
        now = self._clock()
        while self._times and now - self._times[0] >= 60.0:
            self._times.popleft()
        if len(self._times) >= self._limit:
            return 60.0 - (now - self._times[0])
        self._times.append(now)
        return 0.0


class ChatSocket:
    """Accepts sockets and enforces the connection limits; one `_Connection` per socket. The
    per-user limit is counted in Redis (`slots`), across every worker and replica; the total is
    this process's own."""

    def __init__(
        self,
        *,
        upstreams: Upstreams,
        limits: Limits,
        tracing: Tracing,
        slots: ConnectionSlots,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._upstreams = upstreams
        self.limits = limits
        self._tracing = tracing
        self.slots = slots
        self._clock = clock
        self.total = 0

    async def endpoint(self, ws: WebSocket) -> None:
        offered = list(ws.scope.get("subprotocols") or [])
        token = next((p[len("bearer.") :] for p in offered if p.startswith("bearer.")), None)
        # Echo our protocol name rather than the token when the client offered both.
        chosen = (
            PROTOCOL if PROTOCOL in offered else next((p for p in offered if p.startswith("bearer.")), None)
        )
        if self.total >= self.limits.max_connections:
            await ws.close(CLOSE_FULL, "too many connections")
            return
        self.total += 1
        slot = None
        try:
            await ws.accept(subprotocol=chosen)
            if token is None:
                token = await self._first_message_token(ws)
                if token is None:
                    return
            who = await self._verify(ws, token)
            if who is None:
                return
            tenant, user = who
            slot = await self.slots.acquire(tenant, user, self.limits.connections_per_user)
            if slot is None:
                await ws.send_json(error_of_status(errors.exhausted("too many connections for this user")))
                await ws.close(CLOSE_RATE, "too many connections for this user")
                return
            await ws.send_json({"type": "system_event", "event": "connected", "user_id": user})
            connection = _Connection(
                ws,
                token=token,
                upstreams=self._upstreams,
                limits=self.limits,
                tracing=self._tracing,
                clock=self._clock,
            )
            await connection.run()
        except WebSocketDisconnect:
            pass
        finally:
            self.total -= 1
            if slot is not None:
                await self.slots.release(slot)

    async def _first_message_token(self, ws: WebSocket) -> str | None:
        try:
            raw = await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT)
            frame = json.loads(raw)
        except (TimeoutError, json.JSONDecodeError, KeyError):
            frame = None
        token = frame.get("token") if isinstance(frame, dict) and frame.get("type") == "auth" else None
        if isinstance(token, str):
            return token
        await _reject(ws, 'the first message must be {"type": "auth", "token": ...}')
        return None

    async def _verify(self, ws: WebSocket, token: str) -> tuple[str, str] | None:
        """(tenant id, user id) of a valid token (checked by identity), or None after closing."""
        who_am_i: grpc.aio.UnaryUnaryMultiCallable[identity_pb.WhoAmIRequest, identity_pb.WhoAmIResponse]
        who_am_i = self._upstreams.channel("identity").unary_unary(
            WHO_AM_I,
            request_serializer=identity_pb.WhoAmIRequest.SerializeToString,
            response_deserializer=identity_pb.WhoAmIResponse.FromString,
        )
        try:
            reply = await peers.call(
                who_am_i,
                identity_pb.WhoAmIRequest(),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=10.0,
            )
        except platform_errors.AgentmeshError as exc:
            status = platform_errors.status_proto(exc)
            if status.code == code_pb2.UNAUTHENTICATED:
                await _reject(ws, status.message or "invalid access token")
            else:
                await ws.send_json(error_of_status(status))
                await ws.close(1011, "identity is unavailable")
            return None
        return reply.user.tenant_id, reply.user.id or "unknown"


async def _reject(ws: WebSocket, message: str) -> None:
    await ws.send_json(_unauthenticated(message))
    await ws.close(CLOSE_AUTH, "authentication failed")


class _Connection:
    def __init__(
        self,
        ws: WebSocket,
        *,
        token: str,
        upstreams: Upstreams,
        limits: Limits,
        tracing: Tracing,
        clock: Callable[[], float],
    ):
        self._ws = ws
        self._token = token
        self._upstreams = upstreams
        self._limits = limits
        self._tracing = tracing
        self._window = _Window(limits.messages_per_minute, clock)
        self._send_lock = asyncio.Lock()
        self._streams: dict[str, _ChatCall] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._run_sessions: dict[str, str] = {}
        self._last_session = ""

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            if self._ws.application_state == WebSocketState.CONNECTED:
                await self._ws.send_text(json.dumps(message, separators=(",", ":")))

    async def run(self) -> None:
        try:
            while True:
                frame = await self._ws.receive()
                if frame["type"] == "websocket.disconnect":
                    return
                raw = frame.get("text")
                if raw is None:
                    raw = (frame.get("bytes") or b"").decode("utf-8", "replace")
                if len(raw.encode()) > self._limits.max_frame_bytes:
                    await self._ws.close(CLOSE_TOO_BIG, "frame too large")
                    return
                await self._handle(raw)
        finally:
            for task in self._readers.values():
                task.cancel()
            for call in self._streams.values():
                call.cancel()
            await asyncio.gather(*self._readers.values(), return_exceptions=True)

    async def _handle(self, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except json.JSONDecodeError:
            await self.send(error_of_status(errors.BadInput("frame", "must be a JSON object").status()))
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self.send(error_of_status(errors.BadInput("type", "must be a string").status()))
            return
        kind = frame["type"]
        if kind == "ping":
            await self.send({"type": "pong"})
            return
        delay = self._window.retry_after()
        if delay > 0:
            await self.send(error_of_status(errors.exhausted("too many messages", delay)))
            return
        handler = {
            "chat_message": self._chat,
            "cancel": self._cancel,
            "resume": self._resume,
            "tool_outputs": self._tool_outputs,
            "tool_decisions": self._tool_decisions,
        }.get(kind)
        if handler is None:
            await self.send(
                error_of_status(errors.BadInput("type", f"unknown message type {kind!r}").status())
            )
            return
        try:
            await handler(frame)
        except errors.BadInput as exc:
            # Orchestration keys a tool frame's rejection by its run id; the gateway's own does too.
            request_id = frame.get("run_id" if kind in ("tool_outputs", "tool_decisions") else "request_id")
            await self.send(error_of_status(exc.status(), request_id if isinstance(request_id, str) else ""))

    async def _chat(self, frame: dict[str, Any]) -> None:
        session = _string(frame, "session_id", required=True)
        content = _string(frame, "content", required=True)
        request_id = _string(frame, "request_id")
        message = orch_pb.ChatMessage(text=content, request_id=request_id)
        await self._write(session, orch_pb.ChatRequest(session_id=session, message=message))

    async def _cancel(self, frame: dict[str, Any]) -> None:
        run_id = _string(frame, "run_id")
        session = _string(frame, "session_id") or self._run_sessions.get(run_id, "") or self._last_session
        if not session:
            raise errors.BadInput("session_id", "is required unless run_id names a run of this socket")
        await self._write(
            session, orch_pb.ChatRequest(session_id=session, cancel=orch_pb.ChatCancel(run_id=run_id))
        )

    async def _resume(self, frame: dict[str, Any]) -> None:
        run_id = _string(frame, "run_id", required=True)
        session = _string(frame, "session_id") or self._run_sessions.get(run_id, "")
        if not session:
            raise errors.BadInput("session_id", "is required (the session of the run)")
        after = frame.get("after_event_id", 0)
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise errors.BadInput("after_event_id", "must be a non-negative integer")
        self._run_sessions[run_id] = session
        resume = orch_pb.ChatResume(run_id=run_id, after_event_id=after)
        await self._write(session, orch_pb.ChatRequest(session_id=session, resume=resume))

    def _run_session(self, frame: dict[str, Any], run_id: str) -> str:
        session = _string(frame, "session_id") or self._run_sessions.get(run_id, "")
        if not session:
            raise errors.BadInput("session_id", "is required unless run_id names a run of this socket")
        return session

    async def _tool_outputs(self, frame: dict[str, Any]) -> None:
        request = tool_outputs_request(frame)
        session = self._run_session(frame, request.run_id)
        await self._write(session, orch_pb.ChatRequest(session_id=session, tool_outputs=request))

    async def _tool_decisions(self, frame: dict[str, Any]) -> None:
        request = tool_decisions_request(frame)
        session = self._run_session(frame, request.run_id)
        await self._write(session, orch_pb.ChatRequest(session_id=session, tool_decisions=request))

    async def _write(self, session: str, request: orch_pb.ChatRequest) -> None:
        self._last_session = session
        call = self._streams.get(session)
        if call is None or call.done():
            span, trace_md = self._tracing.start("WS Chat", {})
            metadata = [("authorization", f"Bearer {self._token}"), *trace_md]
            chat: grpc.aio.StreamStreamMultiCallable[orch_pb.ChatRequest, orch_pb.ChatResponse]
            chat = self._upstreams.channel("orchestration").stream_stream(
                CHAT,
                request_serializer=orch_pb.ChatRequest.SerializeToString,
                response_deserializer=orch_pb.ChatResponse.FromString,
            )
            call = peers.call(chat, metadata=metadata)
            self._streams[session] = call
            self._readers[session] = asyncio.get_running_loop().create_task(self._read(session, call, span))
        try:
            await call.write(request)
        except platform_errors.AgentmeshError:
            # The stream ended; its reader reports why. The next message opens a new one.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._readers[session]), 5.0)

    async def _read(self, session: str, call: _ChatCall, span: Spans | None = None) -> None:
        try:
            while True:
                reply = await call.read()
                if reply is None:
                    return
                message = reply_message(reply)
                if message.get("run_id"):
                    self._run_sessions[message["run_id"]] = session
                await self.send(message)
        except platform_errors.AgentmeshError as exc:
            if exc.code != grpc.StatusCode.CANCELLED or not call.cancelled():
                await self.send(error_of_status(platform_errors.status_proto(exc)))
        finally:
            if self._streams.get(session) is call:
                del self._streams[session]
            # The stream's spans end with it (unended spans are never exported).
            if span is not None:
                span.end()


def _items(frame: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = frame.get(key)
    if not isinstance(items, list) or not items:
        raise errors.BadInput(key, "must be a non-empty list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise errors.BadInput(f"{key}[{i}]", "must be an object")
    return items


def tool_outputs_request(frame: dict[str, Any]) -> orch_pb.SubmitToolOutputsRequest:
    """A tool_outputs frame as orchestration's SubmitToolOutputsRequest (shapes only; orchestration
    checks the ids against the run)."""
    request = orch_pb.SubmitToolOutputsRequest(run_id=_string(frame, "run_id", required=True))
    for i, item in enumerate(_items(frame, "outputs")):
        is_error = item.get("is_error", False)
        if not isinstance(is_error, bool):
            raise errors.BadInput(f"outputs[{i}].is_error", "must be true or false")
        request.outputs.append(
            orch_pb.ToolOutput(
                tool_call_id=_string(item, "tool_call_id", required=True, field=f"outputs[{i}].tool_call_id"),
                output=_string(item, "output", field=f"outputs[{i}].output"),
                is_error=is_error,
            )
        )
    return request


def tool_decisions_request(frame: dict[str, Any]) -> orch_pb.DecideToolCallsRequest:
    """A tool_decisions frame as orchestration's DecideToolCallsRequest: each decision exactly one of
    approve (true), deny_reason, edited_arguments (a JSON object) or edited_arguments_json."""
    request = orch_pb.DecideToolCallsRequest(run_id=_string(frame, "run_id", required=True))
    for i, item in enumerate(_items(frame, "decisions")):
        field = f"decisions[{i}]"
        decision = orch_pb.ToolDecision(
            tool_call_id=_string(item, "tool_call_id", required=True, field=f"{field}.tool_call_id")
        )
        given = [
            k for k in ("approve", "deny_reason", "edited_arguments", "edited_arguments_json") if k in item
        ]
        if len(given) != 1:
            raise errors.BadInput(
                field, "needs exactly one of approve, deny_reason, edited_arguments, edited_arguments_json"
            )
        kind = given[0]
        if kind == "approve":
            if item["approve"] is not True:
                raise errors.BadInput(f"{field}.approve", "must be true (deny with deny_reason)")
            decision.approve = True
        elif kind == "deny_reason":
            decision.deny_reason = _string(item, kind, required=True, field=f"{field}.deny_reason")
        elif kind == "edited_arguments":
            if not isinstance(item[kind], dict):
                raise errors.BadInput(f"{field}.edited_arguments", "must be a JSON object")
            decision.edited_arguments_json = json.dumps(item[kind], separators=(",", ":"))
        else:
            decision.edited_arguments_json = _string(item, kind, required=True, field=f"{field}.{kind}")
        request.decisions.append(decision)
    return request


def _string(frame: dict[str, Any], key: str, *, required: bool = False, field: str = "") -> str:
    value = frame.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise errors.BadInput(field or key, "must be a string")
    if required and not value.strip():
        raise errors.BadInput(field or key, "is required")
    return value
