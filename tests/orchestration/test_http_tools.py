"""HttpToolExecutor against the local tool server: the signed request, and every failure of a tool
as an error result that names its cause (never an exception)."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator

import pytest

from services.orchestration.tools.http import HttpToolExecutor, sign, verify_signature
from services.orchestration.tools.models import HttpTool, ToolCallRequest, ToolFailure, ToolResult
from services.platform.outbound import OutboundClient
from tests.helpers import free_port
from tests.tools_server import ToolServer

SECRET = b"tenant-signing-secret"
CALL = ToolCallRequest(
    id="call_1_0", name="weather", arguments={"city": "Zürich", "days": 2}, run_id="run-42"
)


@pytest.fixture
async def server() -> AsyncIterator[ToolServer]:
    srv = await ToolServer(SECRET, huge_bytes=100_000).start()
    yield srv
    await srv.stop()


@pytest.fixture
async def executor() -> AsyncIterator[HttpToolExecutor]:
    client = OutboundClient(allowed_hosts=("127.0.0.1",), max_response_bytes=65_536)
    yield HttpToolExecutor(client)
    await client.aclose()


async def run(
    executor: HttpToolExecutor, url: str, *, timeout_ms: int = 5_000, secret: bytes = SECRET
) -> ToolResult:
    return await executor.execute(CALL, HttpTool(url=url, timeout_ms=timeout_ms), secret)


async def test_a_call_is_signed_and_its_json_answer_is_the_result(
    server: ToolServer, executor: HttpToolExecutor
) -> None:
    result = await run(executor, server.url("echo"))
    assert result == ToolResult(
        output=json.dumps({"echo": CALL.arguments}, ensure_ascii=False, separators=(",", ":")),
        is_error=False,
        duration_ms=result.duration_ms,
        failure=None,
    )
    [call] = server.calls
    assert call.verified
    assert call.body == {
        "tool": "weather",
        "arguments": CALL.arguments,
        "run_id": "run-42",
        "tool_call_id": "call_1_0",
    }
    assert call.headers["content-type"] == "application/json"
    assert call.headers["x-agentmesh-signature"].startswith("sha256=")


async def test_the_tool_server_refuses_a_wrong_secret(server: ToolServer, executor: HttpToolExecutor) -> None:
    result = await run(executor, server.url("echo"), secret=b"another tenant's secret")
    assert result.is_error and result.failure is ToolFailure.HTTP_STATUS
    assert "status 401" in result.output and "bad signature" in result.output
    assert [call.verified for call in server.calls] == [False]


async def test_a_timeout(server: ToolServer, executor: HttpToolExecutor) -> None:
    result = await run(executor, server.url("slow"), timeout_ms=300)
    assert result.is_error and result.failure is ToolFailure.TIMEOUT
    assert result.output == "tool 'weather' failed: timed out after 300 ms"
    assert 300 <= result.duration_ms < 3_000


async def test_a_server_error(server: ToolServer, executor: HttpToolExecutor) -> None:
    result = await run(executor, server.url("fail"))
    assert result.failure is ToolFailure.HTTP_STATUS and result.is_error
    assert result.output == 'tool \'weather\' failed: status 500: {"error":"boom"}'


async def test_an_answer_that_is_not_json(server: ToolServer, executor: HttpToolExecutor) -> None:
    result = await run(executor, server.url("text"))
    assert result.failure is ToolFailure.NOT_JSON and result.is_error
    assert "not JSON (text/plain" in result.output


@pytest.mark.parametrize("route", ["huge", "endless"])
async def test_an_answer_too_large(server: ToolServer, executor: HttpToolExecutor, route: str) -> None:
    result = await run(executor, server.url(route))
    assert result.failure is ToolFailure.TOO_LARGE and result.is_error
    assert "larger than 65536 bytes" in result.output


async def test_a_redirect_is_an_error_and_not_followed(
    server: ToolServer, executor: HttpToolExecutor
) -> None:
    result = await run(executor, server.url("redirect"))
    assert result.failure is ToolFailure.REDIRECT and result.is_error
    assert "status 302" in result.output and server.url("echo") in result.output
    assert [call.path for call in server.calls] == ["/redirect"]


async def test_a_refused_address_never_reaches_the_tool(server: ToolServer) -> None:
    client = OutboundClient()  # no allow list: loopback is refused
    try:
        result = await HttpToolExecutor(client).execute(CALL, HttpTool(url=server.url("echo")), SECRET)
    finally:
        await client.aclose()
    assert result.failure is ToolFailure.ADDRESS_REFUSED and result.is_error
    assert "loopback" in result.output and "127.0.0.1" in result.output
    assert server.calls == []


async def test_nothing_listening(executor: HttpToolExecutor) -> None:
    result = await run(executor, f"http://127.0.0.1:{free_port()}/tool")
    assert result.failure is ToolFailure.CONNECT_ERROR and result.is_error
    assert "cannot connect" in result.output


async def test_the_timestamp_is_the_executors_clock(server: ToolServer) -> None:
    client = OutboundClient(allowed_hosts=("127.0.0.1",))
    try:
        stale = HttpToolExecutor(client, clock=lambda: 1_000_000.0)
        result = await stale.execute(CALL, HttpTool(url=server.url("echo")), SECRET)
    finally:
        await client.aclose()
    # Signed correctly but ten-odd days old by the tool server's clock: refused as a replay.
    assert server.calls[0].headers["x-agentmesh-timestamp"] == "1000000"
    assert result.failure is ToolFailure.HTTP_STATUS and "401" in result.output


def test_verify_signature() -> None:
    body = b'{"tool":"weather","arguments":{}}'
    header = sign(SECRET, "1700000000", body)
    assert header == "sha256=" + hmac.new(SECRET, b"1700000000." + body, "sha256").hexdigest()
    assert verify_signature(SECRET, "1700000000", body, header, now=1_700_000_100)
    assert verify_signature(SECRET, "1700000000", body, header, now=1_699_999_800)
    assert not verify_signature(SECRET, "1700000000", body, header, now=1_700_000_301)  # a replay
    assert not verify_signature(SECRET, "1700000000", body, header, now=1_699_999_000)  # from the future
    assert not verify_signature(SECRET, "1700000000", body + b" ", header, now=1_700_000_000)
    assert not verify_signature(b"other", "1700000000", body, header, now=1_700_000_000)
    assert not verify_signature(SECRET, "1700000001", body, header, now=1_700_000_000)
    assert not verify_signature(SECRET, "", body, header, now=1_700_000_000)
    assert not verify_signature(SECRET, "1700000000", body, header.removeprefix("sha256="), now=1_700_000_000)
    assert verify_signature(SECRET, "1700000000", body, header, now=1_700_000_400, tolerance_seconds=600)


async def test_a_url_that_does_not_parse(executor: HttpToolExecutor) -> None:
    result = await run(executor, "http://[::1/tool")
    assert result.failure is ToolFailure.INVALID_URL and result.is_error
    assert "invalid url" in result.output
