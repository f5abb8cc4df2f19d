"""The truncation rules, on the pure context-window function."""

from __future__ import annotations

import dataclasses

import pytest

from services.conversation.context_window import WindowBuilder, build_context
from services.conversation.models import Message, SequenceRange, ToolCallRef
from services.conversation.tokens import ApproximateTokenCounter


def msg(seq: int, role: str = "user", tokens: int = 10, tool: str = "") -> Message:
    return Message(
        id=f"m{seq}",
        conversation_id="c",
        sequence=seq,
        role=role,
        content=f"message {seq}",
        token_count=tokens,
        metadata={},
        tool_call_id=tool,
        create_time=0,
    )


def window(history: list[Message], budget: int, system_prompt: str = ""):
    return build_context(
        list(reversed(history)),
        budget=budget,
        counter=ApproximateTokenCounter(),
        system_prompt=system_prompt,
        last_sequence=history[-1].sequence if history else 0,
    )


def test_newest_messages_that_fit_oldest_dropped_first():
    history = [msg(i) for i in range(1, 11)]
    w = window(history, budget=35)
    assert [m.sequence for m in w.messages] == [8, 9, 10]
    assert w.kept == [SequenceRange(8, 10)]
    assert w.dropped == [SequenceRange(1, 7)]
    assert w.total_tokens == 30


def test_budget_respected_exactly_when_it_is_exactly_full():
    history = [msg(i) for i in range(1, 11)]
    w = window(history, budget=40)
    assert w.total_tokens == 40
    assert [m.sequence for m in w.messages] == [7, 8, 9, 10]


def test_system_prompt_pinned_first_and_counted_first():
    counter = ApproximateTokenCounter()
    prompt = "x" * 40  # 10 + 4 overhead = 14 tokens
    assert counter.count(prompt) == 14
    history = [msg(i) for i in range(1, 6)]
    w = window(history, budget=40, system_prompt=prompt)
    assert w.messages[0].role == "system" and w.messages[0].sequence == 0
    assert w.system_prompt_tokens == 14
    assert [m.sequence for m in w.messages[1:]] == [4, 5]
    assert w.total_tokens == 34 <= 40
    assert not w.system_prompt_truncated


def test_system_prompt_alone_over_budget_is_truncated_and_nothing_else_fits():
    prompt = "y" * 1000
    w = window([msg(1), msg(2)], budget=20, system_prompt=prompt)
    assert w.system_prompt_truncated
    assert w.system_prompt_tokens <= 20
    assert w.total_tokens <= 20
    assert w.messages[0].content == "y" * 64  # (20 - 4) * 4 characters
    assert [m.sequence for m in w.messages[1:]] == []
    assert w.dropped == [SequenceRange(1, 2)]


def test_tool_call_and_its_result_kept_together():
    history = [
        msg(1),
        msg(2, "assistant", 10, tool="call-1"),
        msg(3, "tool", 10, tool="call-1"),
        msg(4, "assistant", 10),
    ]
    # Room for 3 messages: 4 and the unit (2, 3) = 30.
    w = window(history, budget=30)
    assert [m.sequence for m in w.messages] == [2, 3, 4]
    # Room for 2: the unit does not fit whole, so neither half is kept and the window stops.
    w = window(history, budget=25)
    assert [m.sequence for m in w.messages] == [4]
    assert w.dropped == [SequenceRange(1, 3)]
    assert w.total_tokens == 10


def test_parallel_tool_calls_with_interleaved_messages_are_one_unit():
    history = [
        msg(1),
        msg(2, "assistant", 5, tool="a"),
        msg(3, "assistant", 5, tool="b"),
        msg(4, "tool", 5, tool="a"),
        msg(5, "tool", 5, tool="b"),
        msg(6, "user", 5),
    ]
    w = window(history, budget=24)
    assert [m.sequence for m in w.messages] == [6]
    w = window(history, budget=25)
    assert [m.sequence for m in w.messages] == [2, 3, 4, 5, 6]


def test_call_without_result_yet_is_a_unit_of_one():
    history = [msg(1), msg(2, "assistant", 10, tool="pending")]
    w = window(history, budget=15)
    assert [m.sequence for m in w.messages] == [2]


def test_first_message_larger_than_budget_keeps_nothing():
    w = window([msg(1), msg(2, tokens=50)], budget=40)
    assert w.messages == [] and w.kept == [] and w.dropped == [SequenceRange(1, 2)]


def test_reads_only_what_the_budget_needs():
    consumed = []

    def newest_first():
        for seq in range(100_000, 0, -1):
            consumed.append(seq)
            yield msg(seq)

    w = build_context(newest_first(), budget=100, counter=ApproximateTokenCounter(), last_sequence=100_000)
    assert len(w.messages) == 10
    assert len(consumed) == 11  # the ten that fit and the one that did not


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        WindowBuilder(budget=0, counter=ApproximateTokenCounter())


def calling(seq: int, *ids: str, tokens: int = 10) -> Message:
    return dataclasses.replace(
        msg(seq, "assistant", tokens),
        content="",
        tool_calls=tuple(ToolCallRef(i, "lookup", "{}") for i in ids),
    )


def test_tool_calls_message_and_all_its_results_are_one_unit():
    history = [
        msg(1),
        calling(2, "a", "b"),
        msg(3, "tool", 10, tool="a"),
        msg(4, "tool", 10, tool="b"),
        msg(5, "assistant", 10),
    ]
    w = window(history, budget=40)
    assert [m.sequence for m in w.messages] == [2, 3, 4, 5]
    assert w.kept == [SequenceRange(2, 5)] and w.dropped == [SequenceRange(1, 1)]
    # Room for 5 and part of the unit only: none of the unit is kept, and nothing older.
    w = window(history, budget=35)
    assert [m.sequence for m in w.messages] == [5]
    assert w.dropped == [SequenceRange(1, 4)]


def test_a_call_still_waiting_for_a_result_is_left_out_with_the_results_it_has():
    history = [msg(1), msg(2, "assistant", 10), calling(3, "a", "b"), msg(4, "tool", 10, tool="a")]
    w = window(history, budget=100)
    assert [m.sequence for m in w.messages] == [1, 2]
    assert w.kept == [SequenceRange(1, 2)] and w.dropped == [SequenceRange(3, 4)]
    assert w.total_tokens == 20


def test_an_unanswered_call_in_the_middle_leaves_a_gap():
    history = [
        msg(1),
        calling(2, "x"),
        msg(3, "user", 10),
        calling(4, "a"),
        msg(5, "tool", 10, tool="a"),
    ]
    w = window(history, budget=100)
    assert [m.sequence for m in w.messages] == [1, 3, 4, 5]
    assert w.kept == [SequenceRange(1, 1), SequenceRange(3, 5)]
    assert w.dropped == [SequenceRange(2, 2)]
    # Every call returned has its result, and every result its call.
    calls = {c.id for m in w.messages for c in m.tool_calls}
    results = {m.tool_call_id for m in w.messages if m.role == "tool"}
    assert calls == results == {"a"}
