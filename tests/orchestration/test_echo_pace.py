"""echo paced like a hosted model: its tokens are due on a schedule from the start, so the time its
reader spends on one token is not added to the pause before the next (sleep(delay) between tokens
added it, and under load echo itself streamed slower than its setting)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from services.orchestration.providers import echo
from services.orchestration.providers.base import ChatMessage, ModelConfig

DELAY = 0.02


def record_pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses asked for from here on in the calling task (asyncio.sleep is patched process-wide,
    and other tasks of the suite may sleep meanwhile: theirs are not recorded)."""
    pauses: list[float] = []
    test_task = asyncio.current_task()
    real_sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep

    async def recorded(seconds: float) -> None:
        if asyncio.current_task() is test_task:
            pauses.append(seconds)
        await real_sleep(seconds)

    monkeypatch.setattr(echo.asyncio, "sleep", recorded)
    return pauses


async def test_a_slow_reader_does_not_slow_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = record_pauses(monkeypatch)
    provider = echo.EchoProvider(delay_seconds=DELAY)
    text = []
    async for delta in provider.stream(
        ModelConfig(model="echo"), [ChatMessage("user", "one two three four five")]
    ):
        text.append(delta.text)
        time.sleep(1.5 * DELAY)  # noqa: ASYNC251 - the reader holds the loop past the next token
    assert "".join(text) == "Echo: one two three four five"
    assert len(asked) == 6
    # Every token after the first was due before the reader came back for it.
    assert all(seconds < 0 for seconds in asked[1:]), asked


async def test_the_readers_time_is_taken_off_the_next_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = record_pauses(monkeypatch)
    items = []
    async for item in echo.paced(range(5), DELAY):
        items.append(item)
        time.sleep(0.005)  # noqa: ASYNC251 - at least 5 ms on each item before the next is asked for
    assert items == list(range(5))
    assert len(asked) == 5
    assert asked[0] <= DELAY
    # sleep(delay) between items would ask for 20 ms each time.
    assert all(seconds <= DELAY - 0.005 for seconds in asked[1:]), asked
