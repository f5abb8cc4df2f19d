"""Token lifetimes in the page, against `agentmesh up` with 6 s access tokens: the page refreshes
before expiry and keeps chatting past it; a revoked refresh token returns to sign-in with a message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.page import browser, new_page, shot, sign_in
from tests.embedded import Embedded, run_embedded

TTL = 6


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    env = {"AGENTMESH_ACCESS_TOKEN_TTL_SECONDS": str(TTL)}
    with run_embedded(tmp_path_factory.mktemp("page-tokens") / "data", env_extra=env) as running:
        yield running


async def test_the_page_refreshes_and_keeps_working_past_expiry(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url)
        first = await page.evaluate("sessionStorage.getItem('token')")
        await page.locator("#agents button", has_text="Echo assistant").click()
        await asyncio.sleep(TTL + 2)  # the first access token has expired by now
        assert await page.evaluate("sessionStorage.getItem('token')") != first
        await expect(page.locator("#socket-state")).to_have_text("online")
        await page.fill("#composer", "still here")
        await page.press("#composer", "Enter")
        await expect(page.locator(".msg.assistant").last).to_have_text("Echo: still here", timeout=10_000)
        await page.reload()  # REST calls with the refreshed token
        await expect(page.locator(".msg.user")).to_have_text(["still here"])
        await shot(page, "token-refreshed")
        assert not page.console_errors, page.console_errors


async def test_a_revoked_refresh_token_returns_to_sign_in_with_a_message(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url)
        refresh = await page.evaluate("sessionStorage.getItem('refresh')")
        async with httpx.AsyncClient(base_url=up.http_url) as client:
            reply = await client.post("/v1/identity:logout", json={"refreshToken": refresh})
            assert reply.status_code == 200, reply.text
        await expect(page.locator("#signin-view")).to_be_visible(timeout=(TTL + 5) * 1000)
        await expect(page.locator("#signin-message")).to_contain_text("sign in again")
        await expect(page.locator("#agents li")).to_have_count(0)
        await expect(page.locator("#socket-state")).to_have_text("offline")
        await shot(page, "token-revoked")
