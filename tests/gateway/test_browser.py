"""The chat page in Debian's chromium (headless, driven by Playwright): sign in, create an agent,
chat with the answer streaming in, reload and see the history. Screenshot: test-artifacts/."""

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


async def test_sign_in_create_agent_chat_reload_history(live: Any, fakes: Any, chromium: str) -> None:
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
            await page.fill("input[name=password]", "1234")
            await page.click("#signin-form button[type=submit]")
            await expect(page.locator("#socket-state")).to_have_text("online")

            await page.fill("#create-agent input[name=displayName]", "Browser agent")
            await page.click("#create-agent button")
            agent = page.locator("#agents button", has_text="Browser agent")
            await agent.click()
            await expect(page.locator("#chat-title")).to_contain_text("Browser agent")

            question = "tell me something nice about streaming"
            await page.fill("#chat-form input[name=content]", question)
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
            assert not console_errors, console_errors
        finally:
            await browser.close()
