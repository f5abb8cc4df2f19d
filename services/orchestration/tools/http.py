"""HTTP tools: agentmesh POSTs the call to the tool's url, signed, through the outbound client.

The request (docs/tools.md is the tool author's side):
    POST <url>  Content-Type: application/json
    {"tool": name, "arguments": {...}, "run_id": ..., "tool_call_id": ...}
    X-Agentmesh-Timestamp: <unix seconds>
    X-Agentmesh-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
The timestamp is inside the signed text, so a tool server that refuses old timestamps refuses
replays (the Stripe/Slack scheme). A tool's misbehaviour is an error result for the model, never
an exception of the run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable

from services.orchestration.tools.models import HttpTool, ToolCallRequest, ToolFailure, ToolResult
from services.platform.outbound import (
    AddressRefused,
    InvalidUrl,
    OutboundClient,
    OutboundConnectError,
    OutboundError,
    OutboundTimeout,
    RedirectRefused,
    ResponseTooLarge,
    UnresolvableHost,
)

TIMESTAMP_HEADER = "X-Agentmesh-Timestamp"
SIGNATURE_HEADER = "X-Agentmesh-Signature"
_SIGNATURE_PREFIX = "sha256="
# An error status's body goes back to the model as a hint; more would crowd its context.
_STATUS_BODY_CHARS = 500


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Agentmesh-Signature value of `body` sent at `timestamp`."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return _SIGNATURE_PREFIX + digest


def verify_signature(
    secret: bytes, timestamp: str, body: bytes, header: str, *, now: float, tolerance_seconds: int = 300
) -> bool:
    """For tool servers: True when `header` signs `body` at `timestamp` with `secret` and the
    timestamp is within `tolerance_seconds` of `now` (older is a replay, newer a forgery)."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class HttpToolExecutor:
    """Runs one HTTP tool call: `await executor.execute(call, tool, secret)` -> ToolResult."""

    def __init__(self, client: OutboundClient, *, clock: Callable[[], float] = time.time):
        self._client = client
        self._clock = clock

    async def execute(self, call: ToolCallRequest, tool: HttpTool, secret: bytes) -> ToolResult:
        started = time.monotonic()
        output, failure = await self._call(call, tool, secret)
        return ToolResult(
            output=output,
            is_error=failure is not None,
            duration_ms=int((time.monotonic() - started) * 1000),
            failure=failure,
        )

    async def _call(
        self, call: ToolCallRequest, tool: HttpTool, secret: bytes
    ) -> tuple[str, ToolFailure | None]:
        body = json.dumps(
            {"tool": call.name, "arguments": call.arguments, "run_id": call.run_id, "tool_call_id": call.id},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
        }
        prefix = f"tool {call.name!r} failed: "
        try:
            response = await self._client.request(
                "POST", tool.url, content=body, headers=headers, timeout_seconds=tool.timeout_seconds
            )
        except OutboundError as exc:
            failure = _failure_of(exc)
            if failure is ToolFailure.TIMEOUT:
                return f"{prefix}timed out after {tool.timeout_seconds * 1000:.0f} ms", failure
            return prefix + str(exc), failure
        text = response.body.decode("utf-8", errors="replace")
        if response.status >= 400:
            hint = text[:_STATUS_BODY_CHARS]
            return f"{prefix}status {response.status}" + (
                f": {hint}" if hint else ""
            ), ToolFailure.HTTP_STATUS
        try:
            json.loads(response.body)
        except ValueError:
            content_type = response.headers.get("content-type", "no content type")
            return f"{prefix}the answer is not JSON ({content_type})", ToolFailure.NOT_JSON
        return text, None


def _failure_of(exc: OutboundError) -> ToolFailure:
    match exc:
        case InvalidUrl():
            return ToolFailure.INVALID_URL
        case AddressRefused():
            return ToolFailure.ADDRESS_REFUSED
        case OutboundTimeout():
            return ToolFailure.TIMEOUT
        case OutboundConnectError() | UnresolvableHost():
            return ToolFailure.CONNECT_ERROR
        case RedirectRefused():
            return ToolFailure.REDIRECT
        case ResponseTooLarge():
            return ToolFailure.TOO_LARGE
        case _:
            return ToolFailure.REQUEST_FAILED
