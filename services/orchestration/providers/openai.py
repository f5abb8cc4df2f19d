"""`openai`: any OpenAI-compatible /chat/completions endpoint with `stream: true` (OpenAI, vLLM,
Ollama, llama.cpp server), read as server-sent events.

A JSON_SCHEMA response format goes out as `response_format` {"type": "json_schema", "json_schema":
{name, schema, strict: true}}; the run checks the answer itself (not every server enforces it).
Tools go out as `tools` (function tools); the model's calls come back as streamed `tool_calls` deltas,
several per answer, told apart by index, a call's arguments spread over many chunks: they are put
together here and handed on whole, on the last delta. A tool result goes back as a "tool" message
after the assistant message that holds its call.

Connect and read timeouts bound every wait; a failure before the first token is retried (nothing has
been shown yet), a failure after it is not (the client has already seen part of the answer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.orchestration.models import Usage
from services.orchestration.providers.base import (
    ChatMessage,
    Delta,
    ModelConfig,
    ProviderError,
    ToolCall,
    ToolSpec,
)

_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


def _status_code(status: int) -> str:
    if status in (401,):
        return "UNAUTHENTICATED"
    if status == 403:
        return "PERMISSION_DENIED"
    if status == 404:
        return "NOT_FOUND"
    if status == 429:
        return "RESOURCE_EXHAUSTED"
    if status >= 500:
        return "UNAVAILABLE"
    return "INVALID_ARGUMENT"


def _message(m: ChatMessage) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    if m.role == "assistant" and m.tool_calls:
        return {
            "role": "assistant",
            # OpenAI takes null for a message that only calls tools; some servers refuse "".
            "content": m.content or None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
                for c in m.tool_calls
            ],
        }
    return {"role": m.role, "content": m.content}


def _tool(t: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": t.name, "parameters": dict(t.parameters) or {"type": "object"}}
    if t.description:
        function["description"] = t.description
    return {"type": "function", "function": function}


class _CallParts:
    """One streamed call being put together: the first piece names it, later ones add arguments."""

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []

    def add(self, piece: dict[str, Any]) -> None:
        self.id = self.id or str(piece.get("id") or "")
        function = piece.get("function") or {}
        self.name = self.name or str(function.get("name") or "")
        if function.get("arguments"):
            self.arguments.append(str(function["arguments"]))


def _tool_calls(parts: dict[int, _CallParts]) -> tuple[ToolCall, ...]:
    calls = []
    for index in sorted(parts):
        part = parts[index]
        if not part.name:
            raise ProviderError("UNAVAILABLE", f"model provider sent tool call {index} without a name")
        # Some servers leave the id out; the loop needs one to match results to calls.
        call_id = part.id or f"call_{index}"
        calls.append(ToolCall(id=call_id, name=part.name, arguments_json="".join(part.arguments) or "{}"))
    return tuple(calls)


class _Retry(Exception):
    def __init__(self, error: ProviderError):
        self.error = error


class OpenAIProvider:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str = "",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retries: int = 2,
        retry_backoff: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._url = base_url.rstrip("/") + "/chat/completions"
        headers = {"accept": "text/event-stream"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._read_timeout = read_timeout
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=connect_timeout
            ),
            transport=transport,
        )
        self._retries = retries
        self._backoff = retry_backoff

    async def close(self) -> None:
        await self._client.aclose()

    def _body(self, config: ModelConfig, messages: list[ChatMessage]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": config.model,
            "messages": [_message(m) for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if config.tools:
            body["tools"] = [_tool(t) for t in config.tools]
        fmt = config.response_format
        if fmt is not None and fmt.json:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": fmt.name, "schema": fmt.schema, "strict": True},
            }
        if config.temperature is not None:
            body["temperature"] = config.temperature
        if config.max_output_tokens > 0:
            body["max_tokens"] = config.max_output_tokens
        return body

    async def stream(self, config: ModelConfig, messages: list[ChatMessage]) -> AsyncIterator[Delta]:
        body = self._body(config, messages)
        attempt = 0
        while True:
            started = False
            try:
                async for delta in self._attempt(body):
                    started = True
                    yield delta
                return
            except _Retry as retry:
                if started or attempt >= self._retries:
                    raise retry.error from None
            attempt += 1
            await asyncio.sleep(self._backoff * attempt)

    async def _attempt(self, body: dict[str, Any]) -> AsyncIterator[Delta]:
        started = False

        def fail(code: str, message: str, *, retryable: bool) -> Exception:
            error = ProviderError(code, message)
            return _Retry(error) if retryable and not started else error

        try:
            async with self._client.stream("POST", self._url, json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")[:300]
                    raise fail(
                        _status_code(response.status_code),
                        f"model provider answered HTTP {response.status_code}: {text}",
                        retryable=response.status_code in _RETRYABLE_STATUS,
                    )
                usage: Usage | None = None
                calls: dict[int, _CallParts] = {}
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        tool_calls = _tool_calls(calls)
                        if usage is not None or tool_calls:
                            yield Delta("", usage, tool_calls=tool_calls)
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise fail(
                            "UNAVAILABLE", "model provider sent a malformed chunk", retryable=False
                        ) from None
                    if "error" in chunk:
                        detail = chunk["error"]
                        message = (
                            detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
                        )
                        raise fail("UNAVAILABLE", f"model provider error: {message}", retryable=False)
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        for piece in delta.get("tool_calls") or ():
                            calls.setdefault(int(piece.get("index") or 0), _CallParts()).add(piece)
                        content = delta.get("content")
                        if content:
                            started = True
                            yield Delta(str(content))
                raise fail("UNAVAILABLE", "model provider ended the stream without [DONE]", retryable=True)
        except httpx.ConnectTimeout:
            raise fail(
                "UNAVAILABLE", "model provider did not accept the connection in time", retryable=True
            ) from None
        except httpx.ConnectError as exc:
            raise fail(
                "UNAVAILABLE", f"cannot connect to the model provider: {exc}", retryable=True
            ) from None
        except httpx.ReadTimeout:
            raise fail(
                "DEADLINE_EXCEEDED",
                f"model provider sent nothing for {self._read_timeout:g} s",
                retryable=True,
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError):
            raise fail(
                "UNAVAILABLE", "model provider closed the connection mid-answer", retryable=True
            ) from None
        except httpx.HTTPError as exc:
            raise fail("UNAVAILABLE", f"model provider call failed: {exc}", retryable=False) from None
