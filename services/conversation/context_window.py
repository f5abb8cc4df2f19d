"""The context window, as a pure function of the history read newest first.

Rules: the system prompt is pinned first and counted first (cut to the budget if it alone exceeds
it); then the newest messages, going backwards, while they fit; a tool call and its results (the
assistant message with tool_call_id X and the tool messages answering X, with anything between them)
are one unit, kept or dropped whole; the first unit that does not fit ends the window, so what is kept
is always a contiguous tail of the history and the total never exceeds the budget.

`WindowBuilder` is fed one message at a time and says when it needs no more, so the caller reads
only as much history as the budget can hold (plus at most one unit that does not fit).
"""

from __future__ import annotations

from collections.abc import Iterable

from services.conversation.models import ContextWindow, Message, SequenceRange
from services.conversation.tokens import TokenCounter


class WindowBuilder:
    def __init__(self, *, budget: int, counter: TokenCounter, system_prompt: str = ""):
        if budget <= 0:
            raise ValueError("budget must be positive")
        self.budget = budget
        self._counter = counter
        self.system_prompt = system_prompt
        self.system_prompt_tokens = 0
        self.system_prompt_truncated = False
        if system_prompt:
            tokens = counter.count(system_prompt)
            if tokens > budget:
                self.system_prompt = counter.truncate(system_prompt, budget)
                self.system_prompt_truncated = True
                tokens = counter.count(self.system_prompt) if self.system_prompt else 0
            self.system_prompt_tokens = tokens
        self._used = self.system_prompt_tokens
        self._kept: list[Message] = []  # newest first
        self._unit: list[Message] = []  # the tool-call unit being gathered, newest first
        self._unit_tokens = 0
        self._open_calls: set[str] = set()
        self.done = False

    def _fits(self, tokens: int) -> bool:
        return self._used + tokens <= self.budget

    def feed(self, message: Message) -> bool:
        """Offers the next older message; returns False once no older message can be kept."""
        if self.done:
            return False
        if message.role == "tool" and message.tool_call_id:
            self._open_calls.add(message.tool_call_id)
        elif message.role == "assistant" and message.tool_call_id in self._open_calls:
            self._open_calls.discard(message.tool_call_id)
        elif not self._unit and not self._open_calls:
            if not self._fits(message.token_count):
                self.done = True
                return False
            self._used += message.token_count
            self._kept.append(message)
            return True
        self._unit.append(message)
        self._unit_tokens += message.token_count
        if not self._fits(self._unit_tokens):
            # The unit can no longer fit, whatever else it holds: stop reading.
            self.done = True
            return False
        if not self._open_calls:
            self._used += self._unit_tokens
            self._kept.extend(self._unit)
            self._unit, self._unit_tokens = [], 0
        return True

    def result(self, *, last_sequence: int, conversation_id: str = "") -> ContextWindow:
        """The window, given the conversation's newest sequence number.

        A unit still open when the history ran out (tool results whose call is not stored) is kept
        whole if it fits: it is all there is.
        """
        if self._unit and not self.done and self._fits(self._unit_tokens):
            self._used += self._unit_tokens
            self._kept.extend(self._unit)
        kept = list(reversed(self._kept))
        first_kept = kept[0].sequence if kept else last_sequence + 1
        messages = kept
        if self.system_prompt and self.system_prompt_tokens:
            system = Message(
                id="",
                conversation_id=conversation_id,
                sequence=0,
                role="system",
                content=self.system_prompt,
                token_count=self.system_prompt_tokens,
                metadata={},
                tool_call_id="",
                create_time=0,
            )
            messages = [system, *kept]
        return ContextWindow(
            messages=messages,
            kept=[SequenceRange(first_kept, last_sequence)] if kept else [],
            dropped=[SequenceRange(1, first_kept - 1)] if first_kept > 1 else [],
            token_budget=self.budget,
            system_prompt_tokens=self.system_prompt_tokens,
            total_tokens=self._used,
            system_prompt_truncated=self.system_prompt_truncated,
        )


def build_context(
    history_newest_first: Iterable[Message],
    *,
    budget: int,
    counter: TokenCounter,
    system_prompt: str = "",
    last_sequence: int,
    conversation_id: str = "",
) -> ContextWindow:
    """The pure form: the window of a history given newest first (consumed only as far as needed)."""
    builder = WindowBuilder(budget=budget, counter=counter, system_prompt=system_prompt)
    for message in history_newest_first:
        if not builder.feed(message):
            break
    return builder.result(last_sequence=last_sequence, conversation_id=conversation_id)
