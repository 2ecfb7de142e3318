"""Fixtures for tests that drive a real Chromium through Playwright.

    pytestmark = [pytest.mark.anyio, pytest.mark.browser]

    async def test_overview(app, serve_asgi, page, screenshot):
        base = await serve_asgi(create_dashboard([app]))
        await page.goto(base + "/")
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        await screenshot(page, "overview")

One Chromium per test module (launching takes about half a second); a fresh
context and page per test. ``page`` fails the test on JS errors the page
left unclaimed (``page_errors``); ``serve_asgi`` fails it on exceptions the
served app logged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.browser.harness import (
    TIMEOUT_MS,
    VIEWPORT,
    AsgiServers,
    PageErrors,
    screenshot_dir,
)
from tests.browser.harness import screenshot as take_screenshot
from tests.browser.plugin import require_chromium

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # Module scope so one browser serves a module; the event loop ends with the module.
    return "asyncio"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The system Chromium; skips (or fails, under STREAMQ_REQUIRE_BROWSER=1) without one."""
    return require_chromium()


@pytest.fixture(scope="module")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path,
            # Root in a container: no sandbox; a small /dev/shm must not crash tabs.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
            timeout=30_000,
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def serve_asgi() -> AsyncIterator[AsgiServers]:
    """``await serve_asgi(asgi_app) -> "http://127.0.0.1:<port>"``, stopped after the test."""
    async with anyio.create_task_group() as task_group:
        with AsgiServers(task_group) as servers:
            try:
                yield servers
            finally:
                servers.stop()
    if servers.errors:
        pytest.fail("the served app logged errors:\n" + "\n".join(servers.errors), pytrace=False)


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
async def page(
    browser: Browser, page_errors: PageErrors, serve_asgi: AsgiServers
) -> AsyncIterator[Page]:
    """A fresh page (1280x800, UTC, en-US); the test fails on JS errors it leaves.

    It asks for ``serve_asgi`` only so the page closes before the servers stop:
    an open event stream would otherwise hold the server's shutdown.
    """
    context = await browser.new_context(
        viewport=VIEWPORT, locale="en-US", timezone_id="UTC", reduced_motion="reduce"
    )
    context.set_default_timeout(TIMEOUT_MS)
    page_errors.watch(context)
    try:
        yield await context.new_page()
    finally:
        await context.close()
    page_errors.check()


@pytest.fixture
def screenshot(tmp_path: Path) -> Callable[[Page, str], Awaitable[Path]]:
    """``await screenshot(page, name)``: docs/screenshots/<name>.png under
    STREAMQ_SCREENSHOTS=1 (``make screenshots``), else the test's tmp dir."""

    async def shoot(page: Page, name: str) -> Path:
        return await take_screenshot(page, name, screenshot_dir() or tmp_path / "screenshots")

    return shoot
