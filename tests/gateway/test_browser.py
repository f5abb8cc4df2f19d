"""The chat page in Debian's chromium (headless, driven by Playwright): sign in, create an agent,
chat with the answer streaming in, reload and see the history, sign out and see nothing of it.
Screenshots: test-artifacts/."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing")
    return CHROMIUM


async def test_sign_in_chat_reload_history_and_sign_out(live: Any, fakes: Any, chromium: str) -> None:
    from playwright.async_api import async_playwright, expect

    fakes.orchestration.delay = 0.05  # slow enough to watch it stream
    port = await live()
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = await browser.new_page()
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            await page.goto(f"http://127.0.0.1:{port}/")
            # Not the embedded mode: no demo credentials, and nothing behind the sign-in form.
            await expect(page.locator("#signin-view")).to_be_visible()
            await expect(page.locator("#app-view")).to_be_hidden()
            await expect(page.locator("input[name=tenant]")).to_have_value("")
            await expect(page.locator("input[name=username]")).to_have_value("")
            await expect(page.locator("#demo-hint")).to_be_hidden()
            await page.fill("input[name=tenant]", "demo")
            await page.fill("input[name=username]", "user_1")
            await page.fill("input[name=password]", "1234")
            await page.click("#signin-form button[type=submit]")
            await expect(page.locator("#socket-state")).to_have_text("online")

            await page.fill("#create-agent input[name=displayName]", "Browser agent")
            await page.click("#create-agent button")
            agent = page.locator("#agents button", has_text="Browser agent")
            await agent.click()
            await expect(page.locator("#chat-title")).to_contain_text("Browser agent")

            question = "tell me something nice about streaming"
            await page.fill("#composer", question)
            await page.click("#send")
            answer = page.locator(".msg.assistant").last
            await expect(answer).to_have_class("msg assistant streaming")  # deltas arriving
            await expect(answer).to_have_text(f"echo: {question}", timeout=15_000)
            await expect(answer).not_to_have_class("msg assistant streaming")
            await page.screenshot(path=str(ARTIFACTS / "gateway-chat.png"), full_page=True)

            await page.reload()
            await expect(page.locator(".msg.user")).to_have_text([question])
            await expect(page.locator(".msg.assistant")).to_have_text([f"echo: {question}"])
            await page.screenshot(path=str(ARTIFACTS / "gateway-chat-reloaded.png"), full_page=True)

            await page.click("#signout")
            await expect(page.locator("#signin-view")).to_be_visible()
            await expect(page.locator("#app-view")).to_be_hidden()
            # Gone from the DOM, not only hidden: the next person at this browser sees nothing.
            await expect(page.locator("#agents li")).to_have_count(0)
            await expect(page.locator(".msg")).to_have_count(0)
            await expect(page.locator("input[name=password]")).to_have_value("")
            html = await page.content()
            assert question not in html and "Browser agent" not in html
            await page.screenshot(path=str(ARTIFACTS / "gateway-signed-out.png"), full_page=True)
            await page.reload()
            await expect(page.locator("#app-view")).to_be_hidden()
            assert question not in await page.content()
            # The fake upstreams implement no ListSessions, ListRuns or Logout (501): the page
            # goes on without them; any other console error fails the test.
            unexpected = [e for e in console_errors if "status of 501" not in e]
            assert not unexpected, unexpected
        finally:
            await browser.close()


# The page's ChatSocket fed frames by hand: what it sends back, and which frames reach its handlers.
_CUT_AND_RESUME = """async () => {
  const { ChatSocket } = await import("/static/js/ws.js");
  const sent = [], handled = [];
  const fake = { readyState: WebSocket.OPEN, send: (text) => sent.push(JSON.parse(text)) };
  const sock = new ChatSocket({ token: () => "t", handlers: { error: (m) => handled.push(m) }, onState: () => {} });
  sock.ws = fake;
  sock.receive(fake, { type: "system_event", event: "connected" }); // the gateway's hello: ready to send
  const event = (run_id, event_id, session_id) => ({ type: "agent_response", run_id, event_id, session_id, delta: "x" });
  sock.receive(fake, event("r1", 7, "s1"));
  sock.receive(fake, event("r2", 3, "s2"));
  const detail = { "@type": "type.googleapis.com/google.rpc.ErrorInfo", reason: "SLOW_READER",
                   metadata: { run_id: "r1", last_event_id: "7" } };
  sock.receive(fake, { type: "error", error_code: "RESOURCE_EXHAUSTED", error_message: "cut", details: [detail] });
  sock.receive(fake, { type: "error", error_code: "RESOURCE_EXHAUSTED", error_message: "too many", details: [] });
  return { sent, handled: handled.map((m) => m.error_message) };
}"""


async def test_the_page_resumes_a_run_whose_stream_was_cut_for_reading_slowly(
    live: Any, chromium: str
) -> None:
    """A SLOW_READER error (tests/gateway/test_slow_client.py shows when one comes) makes the page
    resume that session's unfinished runs on the same socket from the last event it has; any other
    error still goes to the page's error handler."""
    from playwright.async_api import async_playwright

    port = await live()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{port}/")
            result = await page.evaluate(_CUT_AND_RESUME)
        finally:
            await browser.close()
    assert result == {
        "sent": [{"type": "resume", "session_id": "s1", "run_id": "r1", "after_event_id": 7}],
        "handled": ["too many"],
    }
