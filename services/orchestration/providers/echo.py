"""`echo`: offline and deterministic. Answers "Echo: <the user's last message>" word by word.

The model `echo:tools` also calls tools, so tool runs can be exercised without a model: when the
last message is the user's, it calls every tool it was given, in order, with {"text": <that
message>} (call ids `call_<step>_<index>`, index from 0; the step is always 1, since echo calls tools
only on an answer's first model call); when the last messages are tool results, it answers
"Tool results: " and the results joined with "; " (with a JSON_SCHEMA format: JSON built from
that text, as below).

With a JSON_SCHEMA response format, echo answers JSON built from the schema and the user's last
message (`structured_answer`), so structured runs need no model either.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

from services.orchestration.models import Usage
from services.orchestration.providers.base import ChatMessage, Delta, ModelConfig, ToolCall

_TOKEN = re.compile(r"\S+\s*|\s+")
TOOLS_MODEL = "tools"

T = TypeVar("T")


async def paced(items: Iterable[T], delay: float) -> AsyncIterator[T]:
    """`items` at a model's pace: the i-th (from 0) `delay` * (i + 1) seconds after the first was
    asked for. A hosted model's tokens do not wait for its reader, so the time the reader spends on
    one token (or the loop's lag) is not added to the pause before the next, as `sleep(delay)`
    between tokens would: under load that made echo itself slower than its setting."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    for item in items:
        if delay > 0:
            due += delay
            await asyncio.sleep(due - loop.time())
        yield item


def answer_for(messages: list[ChatMessage]) -> str:
    return f"Echo: {_last_user(messages)}"


def _last_user(messages: list[ChatMessage]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


def structured_answer(schema: dict[str, Any], text: str) -> Any:
    """A value of `schema` made from `text`: enum/const their (first) value; an object every property;
    string the text, integer/number its length, boolean true, null null, array one item of its items;
    anyOf/oneOf their first choice; a type list its first type."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for choices in ("anyOf", "oneOf"):
        if schema.get(choices):
            return structured_answer(schema[choices][0], text)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = kind[0] if kind else "string"
    if kind == "object":
        return {name: structured_answer(sub, text) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        items = schema.get("items")
        return [structured_answer(items if isinstance(items, dict) else {}, text)]
    if kind in ("integer", "number"):
        return len(text)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


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
        fmt = config.response_format
        answer: str | tuple[ToolCall, ...]
        if config.model == TOOLS_MODEL:
            answer = _tool_answer(config, messages)
            if isinstance(answer, str) and fmt is not None and fmt.json:
                answer = json.dumps(structured_answer(fmt.schema, answer))
        elif fmt is not None and fmt.json:
            answer = json.dumps(structured_answer(fmt.schema, _last_user(messages)))
        else:
            answer = answer_for(messages)
        if isinstance(answer, tuple):
            if self._delay > 0:
                await asyncio.sleep(self._delay)
            completion = sum(len(tokens_of(c.arguments_json)) for c in answer)
            yield Delta("", Usage(prompt_tokens, completion), tool_calls=answer)
            return
        tokens = tokens_of(answer)
        if config.max_output_tokens > 0:
            tokens = tokens[: config.max_output_tokens]
        async for i, token in paced(enumerate(tokens, 1), self._delay):
            yield Delta(token, Usage(prompt_tokens, len(tokens)) if i == len(tokens) else None)
