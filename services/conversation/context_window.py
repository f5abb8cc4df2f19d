"""The context window, as a pure function of the history read newest first.

Rules: the system prompt is pinned first and counted first (cut to the budget if it alone exceeds
it); then the newest messages, going backwards, while they fit; a tool call and its results (the
assistant message with tool_calls [X, Y] -- or, the older form, tool_call_id X -- and the tool
messages answering them, with anything between them) are one unit, kept or dropped whole; the first
unit that does not fit ends the window, so the total never exceeds the budget. An assistant message
whose tool_calls are not all answered (a run still waiting for results, or one that ended first) is
left out with the results it has: a model is never shown a call without its result. Apart from such
gaps, what is kept is a contiguous tail of the history.

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
        elif message.role == "assistant" and message.tool_calls:
            ids = {c.id for c in message.tool_calls}
            if not ids <= self._open_calls:
                self._leave_out(ids)
                return True
            self._open_calls -= ids
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

    def _leave_out(self, ids: set[str]) -> None:
        """Drops an unanswered call and the results it has; a unit it completes is kept."""
        answers = [m for m in self._unit if m.role == "tool" and m.tool_call_id in ids]
        self._unit = [m for m in self._unit if not (m.role == "tool" and m.tool_call_id in ids)]
        self._unit_tokens -= sum(m.token_count for m in answers)
        self._open_calls -= ids
        if self._unit and not self._open_calls:
            self._used += self._unit_tokens
            self._kept.extend(self._unit)
            self._unit, self._unit_tokens = [], 0

    def result(self, *, last_sequence: int, conversation_id: str = "") -> ContextWindow:
        """The window, given the conversation's newest sequence number.

        A unit still open when the history ran out (tool results whose call is not stored) is kept
        whole if it fits: it is all there is.
        """
        if self._unit and not self.done and self._fits(self._unit_tokens):
            self._used += self._unit_tokens
            self._kept.extend(self._unit)
        kept = sorted(self._kept, key=lambda m: m.sequence)
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
        kept_ranges = _ranges([m.sequence for m in kept])
        return ContextWindow(
            messages=messages,
            kept=kept_ranges,
            dropped=_gaps(kept_ranges, last_sequence),
            token_budget=self.budget,
            system_prompt_tokens=self.system_prompt_tokens,
            total_tokens=self._used,
            system_prompt_truncated=self.system_prompt_truncated,
        )


def _ranges(sequences: list[int]) -> list[SequenceRange]:
    """Ascending sequence numbers as runs of consecutive numbers."""
    ranges: list[SequenceRange] = []
    for n in sequences:
        if ranges and ranges[-1].last == n - 1:
            ranges[-1] = SequenceRange(ranges[-1].first, n)
        else:
            ranges.append(SequenceRange(n, n))
    return ranges


def _gaps(kept: list[SequenceRange], last_sequence: int) -> list[SequenceRange]:
    """What of 1..last_sequence the kept ranges leave out."""
    gaps: list[SequenceRange] = []
    start = 1
    for r in kept:
        if r.first > start:
            gaps.append(SequenceRange(start, r.first - 1))
        start = r.last + 1
    if start <= last_sequence:
        gaps.append(SequenceRange(start, last_sequence))
    return gaps


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
