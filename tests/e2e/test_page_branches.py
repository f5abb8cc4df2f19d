"""Issue 17 on the page, in Debian's chromium against one real `agentmesh up` for the module: edit a
question and regenerate an answer, switch between the versions with "< n / m >" (after a reload
too), rename a session (and its first message as its title), delete a session. Screenshots:
test-artifacts/page-branches-*.png."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.page import browser, new_page, serious_violations, shot, sign_in
from tests.e2e.test_page_chat import ask, start_chat
from tests.embedded import Embedded, run_embedded


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    with run_embedded(tmp_path_factory.mktemp("page-branches") / "data", echo_delay_ms=20) as running:
        yield running


async def _answered(page, text: str) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    answer = page.locator(".msg.assistant").last
    await expect(answer.locator(".body")).to_have_text(text, timeout=15_000)
    await expect(answer).not_to_have_class("msg assistant streaming", timeout=15_000)


async def test_edit_regenerate_and_the_switcher(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b, for_axe=True)
        await sign_in(page, up.http_url)
        await start_chat(page)
        await ask(page, "what is blue")
        await _answered(page, "Echo: what is blue")
        await ask(page, "and green")
        await _answered(page, "Echo: and green")
        await page.reload()  # the stored history carries the buttons
        await expect(page.locator(".msg")).to_have_count(4)

        # Edit the first question: its answer and everything after give way to the new branch. The
        # buttons sit in a bar under each bubble (a bubble holds its message alone).
        first = page.locator(".msg.user").first
        await page.locator(".branch-bar.user").first.get_by_role("button", name="Edit this message").click()
        await first.get_by_label("Edited message").fill("what is red")
        await first.get_by_role("button", name="Save and answer").click()
        await _answered(page, "Echo: what is red")
        await expect(page.locator(".msg")).to_have_text(["what is red", "Echo: what is red"])
        question_bar = page.locator(".branch-bar.user").first
        await expect(question_bar.locator(".branch-pos")).to_have_text("2 / 2")
        await shot(page, "branches-edited")

        # The switcher shows the earlier version with the rest of its branch, and back.
        await question_bar.get_by_role("button", name="Previous version").click()
        await expect(page.locator(".msg")).to_have_text(
            ["what is blue", "Echo: what is blue", "and green", "Echo: and green"]
        )
        await expect(question_bar.locator(".branch-pos")).to_have_text("1 / 2")
        await expect(question_bar.get_by_role("button", name="Previous version")).to_be_disabled()
        await question_bar.get_by_role("button", name="Next version").click()
        await expect(page.locator(".msg")).to_have_text(["what is red", "Echo: what is red"])

        # Regenerate the answer: a second answer, "2 / 2" on it; the first one is a click away.
        answer_bar = page.locator(".branch-bar.assistant").last
        await answer_bar.get_by_role("button", name="Regenerate this answer").click()
        await _answered(page, "Echo: what is red")
        await expect(answer_bar.locator(".branch-pos")).to_have_text("2 / 2")
        await answer_bar.get_by_role("button", name="Previous answer").click()
        await expect(answer_bar.locator(".branch-pos")).to_have_text("1 / 2")

        # The active path is what a reload (or another tab) shows.
        await page.reload()
        await expect(answer_bar.locator(".branch-pos")).to_have_text("1 / 2")
        await expect(question_bar.locator(".branch-pos")).to_have_text("2 / 2")
        await shot(page, "branches-switcher")
        assert await serious_violations(page) == []
        assert not page.console_errors, page.console_errors


async def test_rename_and_delete_a_session(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url)
        await start_chat(page)
        await ask(page, "plan the   garden party")
        await _answered(page, "Echo: plan the garden party")
        row = page.locator("#sessions li").filter(has=page.locator("button.session.active"))
        # The first message is the title until the session is renamed.
        await expect(row.locator(".title")).to_have_text("plan the garden party")
        session_id = await row.locator("button.session").get_attribute("data-session-id")

        await row.get_by_role("button", name="Rename session").click()
        await page.get_by_label("New session title").fill("Garden party <b>2027</b>")
        await page.get_by_label("New session title").press("Enter")
        row = page.locator("#sessions li").filter(has=page.locator(f"[data-session-id='{session_id}']"))
        await expect(row.locator(".title")).to_have_text("Garden party <b>2027</b>")  # text, not HTML
        await expect(page.locator("#chat-title")).to_contain_text("Garden party")
        await page.reload()
        row = page.locator("#sessions li").filter(has=page.locator(f"[data-session-id='{session_id}']"))
        await expect(row.locator(".title")).to_have_text("Garden party <b>2027</b>")
        await shot(page, "branches-renamed")

        # Delete asks first; dismissed, nothing goes.
        page.once("dialog", lambda d: d.dismiss())
        await row.get_by_role("button", name="Delete session").click()
        await expect(row).to_have_count(1)
        page.once("dialog", lambda d: d.accept())
        await row.get_by_role("button", name="Delete session").click()
        await expect(page.locator(f"#sessions [data-session-id='{session_id}']")).to_have_count(0)
        await expect(page.locator(".msg")).to_have_count(0)
        await expect(page.locator("#composer")).to_be_disabled()
        # Gone for good: not in the list after a reload, and its messages are not found by search.
        await page.reload()
        await expect(page.locator("#socket-state")).to_have_text("online")
        await expect(page.locator(f"#sessions [data-session-id='{session_id}']")).to_have_count(0)
        await page.fill("#search-query", "garden")
        await page.press("#search-query", "Enter")
        await expect(page.locator("#search-results li")).to_have_text(["No matches."])
        await shot(page, "branches-deleted")
        assert not page.console_errors, page.console_errors
