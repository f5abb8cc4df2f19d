"""A newcomer's first minutes, in Debian's chromium against a real `agentmesh up` (no fakes): sign in
as user_1, create an agent, chat and watch the answer stream in, reload and see the history.
Screenshots: test-artifacts/embedded-chat*.png."""

from __future__ import annotations

import os
import pathlib

import pytest

from tests.embedded import run_embedded
from tests.gateway.test_browser import ARGS, ARTIFACTS, CHROMIUM


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test installs it)")
    return CHROMIUM


async def test_newcomer_signs_in_creates_an_agent_and_chats(tmp_path: pathlib.Path, chromium: str) -> None:
    from playwright.async_api import async_playwright, expect

    ARTIFACTS.mkdir(exist_ok=True)
    with run_embedded(tmp_path / "data", echo_delay_ms=40) as up:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=ARGS)
            try:
                page = await browser.new_page()
                console_errors: list[str] = []
                page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
                await page.goto(up.http_url + "/")
                # The embedded mode prefills its demo tenant and user and says how to sign in.
                await expect(page.locator("input[name=tenant]")).to_have_value("demo")
                await expect(page.locator("input[name=username]")).to_have_value("user_1")
                await expect(page.locator("#demo-hint")).to_contain_text("user_1 / 1234")
                await page.fill("input[name=password]", "1234")
                await page.click("#signin-form button[type=submit]")
                await expect(page.locator("#socket-state")).to_have_text("online")
                await expect(page.locator("#agents button", has_text="Echo assistant")).to_be_visible()

                await page.fill("#create-agent input[name=displayName]", "My first agent")
                await page.click("#create-agent button")
                await page.locator("#agents button", has_text="My first agent").click()
                await expect(page.locator("#chat-title")).to_contain_text("My first agent")

                question = "what does a service mesh do for agents"
                await page.fill("#composer", question)
                await page.click("#send")
                answer = page.locator(".msg.assistant").last
                await expect(answer).to_have_class("msg assistant streaming")  # deltas arriving
                await expect(answer).to_have_text(f"Echo: {question}", timeout=15_000)
                await expect(answer).not_to_have_class("msg assistant streaming")
                await page.screenshot(path=str(ARTIFACTS / "embedded-chat.png"), full_page=True)

                await page.reload()
                await expect(page.locator(".msg.user")).to_have_text([question])
                await expect(page.locator(".msg.assistant")).to_have_text([f"Echo: {question}"])
                await page.screenshot(path=str(ARTIFACTS / "embedded-chat-reloaded.png"), full_page=True)
                assert not console_errors, console_errors
            finally:
                await browser.close()
