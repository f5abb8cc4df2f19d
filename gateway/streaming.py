"""Server-streaming RPCs over HTTP: SSE (text/event-stream) or NDJSON (application/x-ndjson).

NDJSON is the default; `Accept: text/event-stream` (what EventSource sends) selects SSE. NDJSON
lines are `{"result": ...}` or, when the stream fails after it started, one `{"error": ...}` line
(grpc-gateway's convention). SSE events carry `id: <event_id>` when the message has an `event_id`
field, and a failure is an `event: error`. An error before the first message is a plain HTTP error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.responses import StreamingResponse

from gateway import errors
from gateway.transcode import to_json

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def wants_sse(accept: str) -> bool:
    return SSE in accept.lower()


def _event_id(payload: Any) -> str | None:
    if isinstance(payload, dict) and "eventId" in payload:
        return str(payload["eventId"])
    return None


def sse_frame(payload: Any, *, event: str | None = None) -> bytes:
    lines = []
    event_id = _event_id(payload) if event is None else None
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(payload, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def ndjson_line(key: str, payload: Any) -> bytes:
    return (json.dumps({key: payload}, separators=(",", ":")) + "\n").encode()


def stream_response(
    call: grpc.aio.UnaryStreamCall[Message, Message],
    first: Message,
    *,
    response_body: str,
    sse: bool,
    headers: dict[str, str],
    on_end: Callable[[], None],
) -> StreamingResponse:
    """Streams `first` and the rest of `call`; the call is cancelled when the client goes away."""

    def encode(message: Message) -> bytes:
        payload = to_json(message, response_body)
        return sse_frame(payload) if sse else ndjson_line("result", payload)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield encode(first)
            while True:
                message = await call.read()
                if not isinstance(message, Message):  # grpc.aio.EOF
                    break
                yield encode(message)
        except grpc.aio.AioRpcError as exc:
            status = errors.body_of(errors.status_of_rpc_error(exc))
            yield sse_frame(status, event="error") if sse else ndjson_line("error", status)
        finally:
            call.cancel()
            on_end()

    media = SSE if sse else NDJSON
    return StreamingResponse(
        body(),
        media_type=media,
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


_NOTHING: tuple[bytes, ...] = ()


def empty_stream(*, sse: bool, headers: dict[str, str]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for chunk in _NOTHING:
            yield chunk

    return StreamingResponse(body(), media_type=SSE if sse else NDJSON, headers=headers)
