"""A tiny OpenAI-compatible /v1/chat/completions server (asyncio, port 0) speaking the real SSE
chunk format. The request's model picks the behaviour: "ok", "fail-mid" (connection dropped after
two chunks), "stall" (silence after two chunks), "flaky" (HTTP 503 once, then ok), "unauthorized",
"rate-limited" (HTTP 429), "down" (HTTP 500), "no-usage" (ok without the usage chunk),
"tools" (two parallel tool calls, their deltas interleaved and each call's arguments split over
several chunks, as OpenAI streams them; once the last message is a tool result, a text answer
naming the results), "json-repair" (text that is not JSON, then, once the last message asks again,
{"x": "fixed"}), "json-bad" ({"x": 5}, whatever it is asked)."""

from __future__ import annotations

import asyncio
import contextlib
import json

# Two calls as OpenAI streams them: the first piece of each has id, type and name; the arguments
# come in pieces, the two calls interleaved.
TOOL_CALL_PIECES = [
    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
    {"index": 0, "function": {"arguments": '{"ci'}},
    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"tz"'}},
    {"index": 0, "function": {"arguments": 'ty": "Par'}},
    {"index": 1, "function": {"arguments": ': "UTC"}'}},
    {"index": 0, "function": {"arguments": 'is"}'}},
]


# Models that always answer an HTTP error.
_FAILING = {
    "unauthorized": "401 Unauthorized",
    "rate-limited": "429 Too Many Requests",
    "down": "500 Internal Server Error",
}


class SseServer:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self._server: asyncio.Server | None = None
        self._flaky_failed = False
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {
                k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            self.requests.append(body)
            self.headers.append(headers)
            await self._respond(body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _respond(self, body: dict, writer: asyncio.StreamWriter) -> None:
        model = body["model"]
        if model in _FAILING or (model == "flaky" and not self._flaky_failed):
            self._flaky_failed = self._flaky_failed or model == "flaky"
            status = _FAILING.get(model, "503 Service Unavailable")
            payload = b'{"error":{"message":"nope"}}'
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )

        async def send(data: str) -> None:
            chunk = f"data: {data}\n\n".encode()
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()

        if model == "tools":
            await self._tools(body, send)
        elif model in ("json-repair", "json-bad"):
            await self._json(model, body, send)
        elif not await self._words(model, send):
            return  # drop the connection without the terminating chunk
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _tools(self, body: dict, send) -> None:
        messages = body["messages"]
        if messages[-1]["role"] == "tool":
            results = [m["content"] for m in messages if m["role"] == "tool"]
            await send(json.dumps({"choices": [{"index": 0, "delta": {"content": "Results: "}}]}))
            await send(json.dumps({"choices": [{"index": 0, "delta": {"content": "; ".join(results)}}]}))
        else:
            for piece in TOOL_CALL_PIECES:
                await send(json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]}))
            await send(json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}))
        await send(json.dumps({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9}}))
        await send("[DONE]")

    async def _json(self, model: str, body: dict, send) -> None:
        asked_again = body["messages"][-1]["content"].startswith("Your answer did not match")
        if model == "json-bad":
            answer = ['{"x": ', "5}"]
        elif asked_again:
            answer = ['{"x": ', '"fixed"}']
        else:
            answer = ["Sure! ", "x is fixed."]
        for piece in answer:
            await send(json.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]}))
        await send(json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}))
        await send("[DONE]")

    async def _words(self, model: str, send) -> bool:
        words = ["Hello", " from", " the", " model", "."]
        for i, word in enumerate(words):
            if i == 2 and model == "fail-mid":
                return False
            if i == 2 and model == "stall":
                await asyncio.sleep(30)
            await send(json.dumps({"choices": [{"index": 0, "delta": {"content": word}}]}))
        if model != "no-usage":
            await send(json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}))
        await send("[DONE]")
        return True
