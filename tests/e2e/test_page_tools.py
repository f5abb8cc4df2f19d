"""Tool calls on the chat page, in Debian's chromium against one real `agentmesh up` for the module:
an agent on `echo:tools` with one client tool that needs approval. Approve / Deny buttons that come
back after a reload and in a second tab, the client tool answered from the page's form, a denial the
answer reflects, tool output that never runs as HTML, axe-core with an approval pending.
Screenshots: test-artifacts/page-tools-*.png."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.page import XSS, browser, new_page, serious_violations, shot, sign_in
from tests.e2e.test_page_chat import ask
from tests.embedded import Embedded, run_embedded

AGENT = "Tool runner"
TOOL = "lookup"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    with run_embedded(tmp_path_factory.mktemp("page-tools") / "data") as running:
        with httpx.Client(base_url=running.http_url, timeout=10) as client:
            login = client.post(
                "/v1/identity:login", json={"tenant": "demo", "username": "user_1", "password": "1234"}
            )
            login.raise_for_status()
            token = login.json()["tokens"]["accessToken"]
            tool = {
                "name": TOOL,
                "description": "Looks the text up (answered by the person at the page)",
                "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
                "execution": "TOOL_EXECUTION_CLIENT",
                "requiresApproval": True,
            }
            created = client.post(
                "/v1/agents",
                headers={"Authorization": f"Bearer {token}"},
                json={"agent": {"displayName": AGENT, "config": {"model": "echo:tools", "tools": [tool]}}},
            )
            assert created.status_code == 200, created.text
        yield running


async def open_agent_chat(page) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    await page.locator("#agents button", has_text=AGENT).first.click()
    await expect(page.locator("#chat-title")).to_contain_text(AGENT)
    await expect(page.locator("#composer")).to_be_enabled()


async def test_approve_then_answer_the_client_tool_across_a_reload_and_a_second_tab(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b, for_axe=True)
        await sign_in(page, up.http_url)
        await open_agent_chat(page)
        await ask(page, "find the apples")
        approve = page.get_by_role("button", name=f"Approve {TOOL}")
        await expect(approve).to_be_visible(timeout=15_000)
        await expect(page.get_by_role("button", name=f"Deny {TOOL}")).to_be_visible()
        call = page.locator(".tool-call").last
        await expect(call.locator(".tool-name")).to_have_text(TOOL)
        await expect(call.locator(".tool-status")).to_have_text("awaiting approval")
        await expect(call.locator(".tool-args")).to_contain_text('"text": "find the apples"')
        await shot(page, "tools-approval")
        assert await serious_violations(page) == []  # the page with an approval pending

        # A reload reads the waiting run (GetRun's pending calls): the buttons are back, once.
        await page.reload()
        await expect(page.locator("#socket-state")).to_have_text("online")
        await expect(approve).to_be_visible(timeout=15_000)
        await expect(page.locator(".tool-call")).to_have_count(1)

        # A second tab (its own sign-in) opening the session from the list sees the same approval.
        other = await new_page(b)
        await sign_in(other, up.http_url)
        await other.locator("#sessions button.session").first.click()
        await expect(other.get_by_role("button", name=f"Approve {TOOL}")).to_be_visible(timeout=15_000)

        await approve.click()
        output = page.get_by_label(f"Output of {TOOL}")
        await expect(output).to_be_visible(timeout=15_000)
        await expect(call.locator(".tool-status")).to_have_text("awaiting output")
        # The other tab follows the run: its approval turns into the same form.
        await expect(other.get_by_label(f"Output of {TOOL}")).to_be_visible(timeout=15_000)
        await expect(other.get_by_role("button", name=f"Approve {TOOL}")).to_have_count(0)
        await shot(page, "tools-output-form")

        answer_text = "42 apples " + " ".join(XSS)
        await output.fill(answer_text)
        await page.get_by_role("button", name="Send output").click()
        bubble = page.locator(".msg.assistant").last
        await expect(bubble.locator(".body")).to_contain_text("Tool results: 42 apples", timeout=15_000)
        await expect(bubble).not_to_have_class("msg assistant streaming", timeout=15_000)
        await expect(call.locator(".tool-status")).to_have_text("completed")
        await expect(call.locator(".tool-output")).to_have_text(answer_text)
        await expect(other.locator(".msg.assistant .body").last).to_contain_text("Tool results: 42 apples")
        assert await page.evaluate("window.__xss") is None
        assert await other.evaluate("window.__xss") is None
        await shot(page, "tools-answer")

        # After a reload the finished run comes from the stored messages: the call with its result.
        await page.reload()
        stored = page.locator(".tool-call").last
        await expect(stored.locator(".tool-output")).to_have_text(answer_text, timeout=15_000)
        await expect(page.locator(".msg.assistant .body").last).to_contain_text("Tool results: 42 apples")
        await expect(page.get_by_role("button", name=f"Approve {TOOL}")).to_have_count(0)
        assert await page.evaluate("window.__xss") is None
        assert not page.console_errors, page.console_errors
        assert not other.console_errors, other.console_errors


async def test_deny_with_a_reason_is_what_the_answer_reflects(up: Embedded) -> None:
    from playwright.async_api import expect

    async with browser() as b:
        page = await new_page(b)
        await sign_in(page, up.http_url)
        await open_agent_chat(page)
        await ask(page, "delete everything")
        deny = page.get_by_role("button", name=f"Deny {TOOL}")
        await expect(deny).to_be_visible(timeout=15_000)
        await page.get_by_label(f"Reason for denying {TOOL} (optional)").fill("not today")
        await deny.click()
        bubble = page.locator(".msg.assistant").last
        await expect(bubble.locator(".body")).to_contain_text("denied", timeout=15_000)
        await expect(bubble.locator(".body")).to_contain_text("not today")
        call = bubble.locator(".tool-call")
        await expect(call.locator(".tool-status")).to_have_text("denied")
        await expect(page.get_by_label(f"Output of {TOOL}")).to_have_count(0)
        await shot(page, "tools-denied")
        assert not page.console_errors, page.console_errors
