"""echo paced like a hosted model: its tokens are due on a schedule from the start, so a reader that
is slow on one token does not delay the ones after it (sleep(delay) between tokens did, and under
load echo itself streamed slower than its setting)."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.orchestration.providers import echo
from services.orchestration.providers.base import ChatMessage, ModelConfig

DELAY = 0.02


async def test_a_slow_reader_does_not_slow_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(seconds: float) -> None:
        asked.append(seconds)
        await real_sleep(seconds)

    monkeypatch.setattr(echo.asyncio, "sleep", recorded)
    provider = echo.EchoProvider(delay_seconds=DELAY)
    text = []
    async for delta in provider.stream(
        ModelConfig(model="echo"), [ChatMessage("user", "one two three four five")]
    ):
        text.append(delta.text)
        time.sleep(1.5 * DELAY)  # noqa: ASYNC251 - the reader holds the loop past the next token
    assert "".join(text) == "Echo: one two three four five"
    assert len(asked) == 6
    # The first token waits its interval; every later one was due before the reader came back.
    assert 0 < asked[0] <= DELAY
    assert all(seconds < 0 for seconds in asked[1:]), asked


async def test_a_late_wake_up_shortens_the_next_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    clock = [100.0]
    asked: list[float] = []

    async def late(seconds: float) -> None:
        asked.append(seconds)
        clock[0] += seconds + 0.005  # every wake-up comes 5 ms after it was due

    monkeypatch.setattr(loop, "time", lambda: clock[0])
    monkeypatch.setattr(echo.asyncio, "sleep", late)
    items = [item async for item in echo.paced(range(5), DELAY)]
    assert items == list(range(5))
    assert asked == pytest.approx([DELAY] + [DELAY - 0.005] * 4)
    assert clock[0] == pytest.approx(100.0 + 5 * DELAY + 0.005)
