"""The agent editor in Debian's chromium against one real `agentmesh up` for the module: a
validation error shown on its field, version diff and rollback, a member's read-only view, an
agent name made of XSS payloads, axe-core. Screenshots: test-artifacts/page-agent-*.png."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.page import XSS, browser, new_page, serious_violations, shot, sign_in
from tests.embedded import Embedded, run_embedded


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    with run_embedded(tmp_path_factory.mktemp("page-agents") / "data") as running:
        yield running


async def create_and_edit(page, name: str) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    await page.fill("#new-agent-name", name)
    await page.click("#create-agent button")
    await page.get_by_role("button", name=f"Edit {name}", exact=True).click()
    await expect(page.locator("#agent-view")).to_be_visible()
    await expect(page.locator("#f-displayName")).to_have_value(name)


async def test_validation_error_is_shown_on_its_field(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b, for_axe=True)
        await sign_in(page, up.http_url)
        await create_and_edit(page, "Validated")
        await expect(page.locator("#model-hint")).to_contain_text("echo:*")
        await page.fill("#f-temperature", "5")
        await page.fill("#f-tools", '[{"name": "bad name!", "description": "d"}]')
        await page.click("#agent-save")
        await expect(page.locator("#err-temperature")).to_contain_text("between 0.0 and 2.0")
        await expect(page.locator("#f-temperature")).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#err-tools")).to_contain_text("tools[0].name")
        await expect(page.locator("#err-displayName")).to_be_hidden()
        await page.fill("#f-tools", "not json")
        await page.click("#agent-save")
        await expect(page.locator("#err-tools")).to_contain_text("not valid JSON")
        await shot(page, "agent-validation")
        assert await serious_violations(page) == []  # the agent editor
        # Nothing was stored: still version 1.
        await expect(page.locator("#versions li")).to_have_count(1)


async def test_version_diff_and_rollback(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url)
        await create_and_edit(page, "Versioned")
        await page.fill("#f-temperature", "0.2")
        await page.fill("#f-systemPrompt", "Be brief.")
        await page.click("#agent-save")
        await expect(page.locator("#versions li")).to_have_count(2)
        await expect(page.locator("#toast")).to_contain_text("Saved version 2")
        await expect(page.locator("#toast")).to_be_hidden(timeout=5_000)  # success goes away
        await page.select_option("#diff-form [name=from]", "1")
        await page.select_option("#diff-form [name=to]", "2")
        await page.click("#diff-form button")
        rows = page.locator("#diff .diff-row")
        await expect(rows.filter(has_text="config.temperature")).to_contain_text("0.2")
        await expect(rows.filter(has_text="config.system_prompt")).to_contain_text("Be brief.")
        await shot(page, "agent-diff")

        await page.get_by_role("button", name="Roll back to version 1").click()
        await expect(page.locator("#versions li")).to_have_count(3)
        await expect(page.locator("#f-systemPrompt")).not_to_have_value("Be brief.")
        await page.get_by_role("button", name="Deactivate").click()
        await expect(page.locator("#agent-state")).to_have_text("Inactive")
        await page.get_by_role("button", name="Activate").click()
        await expect(page.locator("#agent-state")).to_have_text("Active")
        assert not page.console_errors, page.console_errors


async def test_member_sees_read_only_views(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url, "user_2", "5678")
        await expect(page.locator("#agents button", has_text="Echo assistant")).to_be_visible()
        await expect(page.locator("#create-agent")).to_be_hidden()
        await page.get_by_role("button", name="View Echo assistant").click()
        await expect(page.locator("#f-displayName")).to_have_value("Echo assistant")
        for sel in ("#agent-save", "#agent-toggle"):
            await expect(page.locator(sel)).to_be_hidden()
        await expect(page.locator("#versions button")).to_have_count(0)
        for field in ("#f-displayName", "#f-model", "#f-systemPrompt", "#f-temperature", "#f-tools"):
            await expect(page.locator(field)).not_to_be_editable()
        await shot(page, "agent-member")


async def test_xss_in_an_agent_name_never_runs(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url)
        for payload in XSS:
            await page.fill("#new-agent-name", payload[:60])
            await page.click("#create-agent button")
            await expect(page.locator("#agents li")).to_have_count(
                1 + XSS.index(payload) + 1 + 2, timeout=5_000
            )
        button = page.locator("#agents button", has_text="<img src=x").first
        await button.click()  # a session with it: its name in the title
        await expect(page.locator("#chat-title")).to_contain_text("<img src=x")
        await page.get_by_role("button", name=XSS[2][:60] and "Edit <script>", exact=False).first.click()
        await expect(page.locator("#agent-heading")).to_contain_text("<script>")
        assert await page.evaluate("window.__xss") is None
        assert await page.locator("img, script:not([src])").count() == 0
        await shot(page, "agent-xss")
