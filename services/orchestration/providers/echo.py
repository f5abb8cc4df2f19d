"""`echo`: offline and deterministic. Answers "Echo: <the user's last message>" word by word.

The model `echo:tools` also calls tools, so tool runs can be exercised without a model: when the
last message is the user's, it calls every tool it was given, in order, with {"text": <that
message>} (call ids `call_<step>_<index>`, index from 0; the step is always 1, since echo calls tools
only on an answer's first model call); when the last messages are tool results, it answers
"Tool results: " and the results joined with "; ".
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

from services.orchestration.models import Usage
from services.orchestration.providers.base import ChatMessage, Delta, ModelConfig, ToolCall

_TOKEN = re.compile(r"\S+\s*|\s+")
TOOLS_MODEL = "tools"


def answer_for(messages: list[ChatMessage]) -> str:
    last = next((m.content for m in reversed(messages) if m.role == "user"), "")
    return f"Echo: {last}"


def tokens_of(text: str) -> list[str]:
    """Word tokens that keep their trailing whitespace, so they concatenate back to `text`."""
    return _TOKEN.findall(text)


def _trailing_tool_results(messages: list[ChatMessage]) -> list[str]:
    results: list[str] = []
    for m in reversed(messages):
        if m.role != "tool":
            break
        results.append(m.content)
    return results[::-1]


def _tool_answer(config: ModelConfig, messages: list[ChatMessage]) -> str | tuple[ToolCall, ...]:
    """`echo:tools`'s answer: the calls to make, or the text."""
    results = _trailing_tool_results(messages)
    if results:
        return "Tool results: " + "; ".join(results)
    if not messages or messages[-1].role != "user" or not config.tools:
        return answer_for(messages)
    step = 1
    arguments = json.dumps({"text": messages[-1].content})
    return tuple(
        ToolCall(id=f"call_{step}_{index}", name=tool.name, arguments_json=arguments)
        for index, tool in enumerate(config.tools)
    )


class EchoProvider:
    def __init__(self, *, delay_seconds: float = 0.0):
        self._delay = delay_seconds

    async def stream(self, config: ModelConfig, messages: list[ChatMessage]) -> AsyncIterator[Delta]:
        prompt_tokens = sum(len(tokens_of(m.content)) for m in messages)
        answer = _tool_answer(config, messages) if config.model == TOOLS_MODEL else answer_for(messages)
        if isinstance(answer, tuple):
            if self._delay > 0:
                await asyncio.sleep(self._delay)
            completion = sum(len(tokens_of(c.arguments_json)) for c in answer)
            yield Delta("", Usage(prompt_tokens, completion), tool_calls=answer)
            return
        tokens = tokens_of(answer)
        if config.max_output_tokens > 0:
            tokens = tokens[: config.max_output_tokens]
        for i, token in enumerate(tokens):
            if self._delay > 0:
                await asyncio.sleep(self._delay)
            last = i == len(tokens) - 1
            yield Delta(token, Usage(prompt_tokens, len(tokens)) if last else None)
