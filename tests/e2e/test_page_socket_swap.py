"""The page's socket swap on a new access token (ws.js reopen()), driven from the page's own modules
so the race lands every time instead of when a timer happens to fire: a message sent while the new
socket connects, one sent on the old socket just before it closes, and an answer streaming across
swaps. Each must reach the agent exactly once and show its whole answer once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.page import browser, new_page, shot, sign_in
from tests.embedded import Embedded, run_embedded

# Slow enough that an answer is still streaming when the test swaps the socket under it.
DELAY_MS = 120

# The page's own api.js (the URL app.js imported, so the same instance): its refresh() is the one
# the timer calls, and its onTokens() is app.js's socket.reopen().
REFRESH = "async () => { const { api } = await import('/static/js/api.js'); await api.refresh(); }"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    with run_embedded(tmp_path_factory.mktemp("page-swap") / "data", echo_delay_ms=DELAY_MS) as running:
        yield running


async def start_chat(page: Any) -> None:
    from playwright.async_api import expect

    await page.locator("#agents button", has_text="Echo assistant").first.click()
    await expect(page.locator("#composer")).to_be_enabled()


async def answered_once(page: Any, question: str) -> None:
    """The answer shows, and after a reload the stored history has the question and its answer once."""
    from playwright.async_api import expect

    await expect(page.locator(".msg.assistant").last).to_have_text(f"Echo: {question}", timeout=15_000)
    await page.reload()
    await expect(page.locator("#socket-state")).to_have_text("online")
    await expect(page.locator(".msg.user")).to_have_text([question])
    await expect(page.locator(".msg.assistant")).to_have_text([f"Echo: {question}"])


async def test_a_message_sent_while_the_new_socket_connects_is_sent_once(up: Embedded) -> None:
    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url)
        await start_chat(page)
        # keep() reopens the socket synchronously and only microtasks run before the submit, so the
        # new socket is still connecting when the message goes.
        state = await page.evaluate(
            """async (text) => {
              const { api } = await import('/static/js/api.js');
              await api.refresh();
              const input = document.querySelector('#composer');
              input.value = text;
              document.querySelector('#chat-form').requestSubmit();
              const toast = document.querySelector('#toast');
              return { left: input.value, toast: toast.hidden ? '' : toast.textContent };
            }""",
            "sent while connecting",
        )
        assert state == {"left": "", "toast": ""}, state
        await answered_once(page, "sent while connecting")
        await shot(page, "swap-connecting")
        assert not page.console_errors, page.console_errors


async def test_a_message_sent_just_before_the_old_socket_closes_is_answered_once(up: Embedded) -> None:
    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url)
        await start_chat(page)
        # The frame leaves on the open socket, which the swap closes before any of the run's events
        # can come back on it: what a refresh landing right after Enter does.
        await page.evaluate(
            """async (text) => {
              const { api } = await import('/static/js/api.js');
              document.querySelector('#composer').value = text;
              document.querySelector('#chat-form').requestSubmit();
              api.onTokens();
            }""",
            "sent as the socket closes",
        )
        await answered_once(page, "sent as the socket closes")
        assert not page.console_errors, page.console_errors


async def test_an_answer_streaming_across_two_swaps_shows_every_delta_once(up: Embedded) -> None:
    from playwright.async_api import expect

    question = " ".join(f"w{i}" for i in range(30))  # about 4 s of deltas
    full = f"Echo: {question}"
    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url)
        await start_chat(page)
        await page.fill("#composer", question)
        await page.press("#composer", "Enter")
        answer = page.locator(".msg.assistant").last
        await expect(answer).to_contain_text("w2", timeout=10_000)
        # Every text the bubble shows from now on: a delta lost or shown twice across a swap makes
        # one of them something other than a beginning of the answer.
        await answer.evaluate(
            """(el) => {
              window.__texts = [];
              new MutationObserver(() => window.__texts.push(el.textContent))
                .observe(el, { childList: true, subtree: true, characterData: true });
            }"""
        )
        await page.evaluate(REFRESH)
        await expect(answer).to_contain_text("w12", timeout=10_000)
        await page.evaluate(REFRESH)
        await expect(answer).to_have_text(full, timeout=15_000)
        await expect(answer).not_to_have_class("msg assistant streaming")
        texts: list[str] = await page.evaluate("window.__texts")
        assert texts, "the bubble did not change after the first swap"
        wrong = [t for t in texts if not full.startswith(t.strip())]
        assert not wrong, wrong[:3]
        await expect(page.locator(".msg.assistant")).to_have_count(1)
        await answered_once(page, question)
        assert not page.console_errors, page.console_errors
