"""The LangGraph side of bench/chat_load.py: one node whose chat model answers like agentmesh's echo
provider ("Echo: " and the user's last message, word token by word token), each token after the same
pause (BENCH_ECHO_DELAY_MS, default 20 ms), so both servers stream the same 51 tokens at the same pace.

Served by `langgraph dev` (langgraph.json beside this file) from the LangGraph virtualenv
(`make bench-langgraph`); it imports only LangGraph's own packages, never agentmesh's.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import START, MessagesState, StateGraph

# The same tokenizer as services/orchestration/providers/echo.py: words keeping their trailing space.
_TOKEN = re.compile(r"\S+\s*|\s+")


def _answer(messages: list[BaseMessage]) -> str:
    last = next((m for m in reversed(messages) if m.type == "human"), None)
    return f"Echo: {last.content if last is not None else ''}"


class PacedEcho(BaseChatModel):
    """Streams its answer token by token, `delay` seconds apart (as echo does)."""

    delay: float = float(os.environ.get("BENCH_ECHO_DELAY_MS", "20")) / 1000

    @property
    def _llm_type(self) -> str:
        return "paced-echo"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=_answer(messages)))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        raise NotImplementedError("the benchmark streams asynchronously")

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Paced as echo is (services/orchestration/providers/echo.py `paced`): token i is due
        # delay * (i + 1) after the start, whatever the reader's time between tokens.
        loop = asyncio.get_running_loop()
        due = loop.time()
        for token in _TOKEN.findall(_answer(messages)):
            if self.delay > 0:
                due += self.delay
                await asyncio.sleep(due - loop.time())
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))


model = PacedEcho()


async def chat(state: MessagesState) -> dict[str, list[BaseMessage]]:
    return {"messages": [await model.ainvoke(state["messages"])]}


graph = StateGraph(MessagesState).add_node("chat", chat).add_edge(START, "chat").compile()
