"""`echo`: offline and deterministic. Answers "Echo: <the user's last message>" word by word."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from services.orchestration.models import Usage
from services.orchestration.providers.base import ChatMessage, Delta, ModelConfig

_TOKEN = re.compile(r"\S+\s*|\s+")


def answer_for(messages: list[ChatMessage]) -> str:
    last = next((m.content for m in reversed(messages) if m.role == "user"), "")
    return f"Echo: {last}"


def tokens_of(text: str) -> list[str]:
    """Word tokens that keep their trailing whitespace, so they concatenate back to `text`."""
    return _TOKEN.findall(text)


class EchoProvider:
    def __init__(self, *, delay_seconds: float = 0.0):
        self._delay = delay_seconds

    async def stream(self, config: ModelConfig, messages: list[ChatMessage]) -> AsyncIterator[Delta]:
        tokens = tokens_of(answer_for(messages))
        if config.max_output_tokens > 0:
            tokens = tokens[: config.max_output_tokens]
        prompt_tokens = sum(len(tokens_of(m.content)) for m in messages)
        for i, token in enumerate(tokens):
            if self._delay > 0:
                await asyncio.sleep(self._delay)
            last = i == len(tokens) - 1
            yield Delta(token, Usage(prompt_tokens, len(tokens)) if last else None)
