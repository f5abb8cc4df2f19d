"""`openai`: any OpenAI-compatible /chat/completions endpoint with `stream: true` (OpenAI, vLLM,
Ollama, llama.cpp server), read as server-sent events.

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
from services.orchestration.providers.base import ChatMessage, Delta, ModelConfig, ProviderError

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
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
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
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        if usage is not None:
                            yield Delta("", usage)
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
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            started = True
                            yield Delta(text)
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
