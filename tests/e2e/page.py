"""Helpers of the page tests (tests/e2e/test_page_*.py): one `agentmesh up` per module, Debian's
chromium per test, sign-in, axe-core and the XSS probes."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.gateway.test_browser import ARGS, ARTIFACTS, CHROMIUM

ROOT = pathlib.Path(__file__).resolve().parents[2]
# git-ignored; axe-core is installed here on first use, never committed.
AXE_DIR = ROOT / ".cache" / "axe"
AXE = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"

# Each would set window.__xss if any of it ran as code.
XSS = [
    "<img src=x onerror=\"window.__xss='img'\">",
    "[click](javascript:window.__xss='link')",
    "<script>window.__xss='script'</script>",
    "<a href=\"javascript:window.__xss='a'\">a</a>",
]


def need_chromium() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test installs it)")
    return CHROMIUM


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=need_chromium(), args=ARGS)
        try:
            yield b
        finally:
            await b.close()


async def new_page(b: Any, *, width: int = 1200, height: int = 800, for_axe: bool = False) -> Any:
    """A page in a fresh context (its own sessionStorage), console errors collected on it. axe-core
    goes in as an inline script, which the page's CSP refuses: only the axe pages bypass it."""
    context = await b.new_context(viewport={"width": width, "height": height}, bypass_csp=for_axe)
    page = await context.new_page()
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    return page


async def sign_in(page: Any, url: str, user: str = "user_1", password: str = "1234") -> None:
    from playwright.async_api import expect

    await page.goto(url + "/")
    await page.fill("input[name=tenant]", "demo")
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", password)
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#socket-state")).to_have_text("online")


def axe_path() -> pathlib.Path:
    if not AXE.exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(AXE_DIR), "axe-core@4"],
            check=True,
            capture_output=True,
            timeout=180,
        )
    return AXE


async def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now."""
    await page.add_script_tag(path=str(axe_path()))
    result = await page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"page-{name}.png"), full_page=True)
