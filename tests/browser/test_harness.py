"""The browser-test harness itself, against a tiny Starlette app defined here.

Proves the pieces the dashboard tests rely on: a served ASGI app seen live by
a real Chromium (a counter changed on the server shows up without a reload),
auto-waiting assertions, a payload rendered as text versus executed, page JS
errors caught, screenshots written.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.async_api import Browser, Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from tests.browser.harness import XSS_PAYLOAD, AsgiServers, PageErrors, PageErrorsFound

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

COUNTER_PAGE = """<!doctype html>
<html><head><title>counter</title></head><body>
<h1>Counter</h1>
<p>Count: <span id="count">?</span></p>
<button id="bump">bump</button>
<button id="crash">crash</button>
<script>
  async function refresh() {
    const response = await fetch("/count");
    document.getElementById("count").textContent = (await response.json()).count;
  }
  document.getElementById("bump").onclick = async () => {
    await fetch("/bump", {method: "POST"});
    await refresh();
  };
  document.getElementById("crash").onclick = () => { throw new Error("boom from the page"); };
  refresh();
  setInterval(refresh, 100);
</script>
</body></html>
"""


def tiny_app() -> tuple[Starlette, dict[str, int]]:
    state = {"count": 0}

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(COUNTER_PAGE)

    async def count(request: Request) -> JSONResponse:
        return JSONResponse({"count": state["count"]})

    async def bump(request: Request) -> JSONResponse:
        state["count"] += 1
        return JSONResponse({"count": state["count"]})

    async def note(request: Request) -> HTMLResponse:
        # ?raw=1 is the broken page the escaping check must catch.
        text = request.query_params["text"]
        shown = text if request.query_params.get("raw") else html.escape(text)
        return HTMLResponse(f"<!doctype html><body><p id='note'>{shown}</p></body>")

    async def broken_asset(request: Request) -> HTMLResponse:
        return HTMLResponse('<!doctype html><body><script src="/static/missing.js"></script>')

    routes = [
        Route("/", home),
        Route("/broken-asset", broken_asset),
        Route("/count", count),
        Route("/bump", bump, methods=["POST"]),
        Route("/note", note),
    ]
    return Starlette(routes=routes), state


async def test_page_sees_server_changes_live(serve_asgi: AsgiServers, page: Page) -> None:
    app, state = tiny_app()
    base = await serve_asgi(app)
    await page.goto(base + "/")
    count = page.locator("#count")
    await expect(count).to_have_text("0")

    state["count"] = 41  # changed behind the page's back: its polling must show it
    await expect(count).to_have_text("41")

    await page.get_by_role("button", name="bump").click()
    await expect(count).to_have_text("42")
    assert state["count"] == 42


async def test_escaped_script_renders_as_text(serve_asgi: AsgiServers, page: Page) -> None:
    app, _ = tiny_app()
    base = await serve_asgi(app)
    await page.goto(base + "/note?" + _query(XSS_PAYLOAD))
    await expect(page.locator("#note")).to_have_text(XSS_PAYLOAD)
    assert await page.locator("#note script, #note img").count() == 0
    assert await page.evaluate("window.__xss") is None


async def test_unescaped_script_is_caught(serve_asgi: AsgiServers, page: Page) -> None:
    # The control: the same checks see the payload run when the page does not escape it.
    app, _ = tiny_app()
    base = await serve_asgi(app)
    await page.goto(base + "/note?raw=1&" + _query(XSS_PAYLOAD))
    await page.wait_for_function("window.__xss === 'img'")
    assert await page.locator("#note img").count() == 1


async def test_page_js_error_is_caught(
    serve_asgi: AsgiServers, page: Page, page_errors: PageErrors
) -> None:
    app, _ = tiny_app()
    base = await serve_asgi(app)
    await page.goto(base + "/")
    await expect(page.locator("#count")).to_have_text("0")
    page_errors.check()  # nothing yet

    await page.get_by_role("button", name="crash").click()
    message = await page_errors.wait_for("boom from the page")
    assert message.startswith("uncaught Error")
    with pytest.raises(PageErrorsFound, match="boom from the page"):
        page_errors.check()
    page_errors.take()  # claimed: the fixture's own check at teardown passes


async def test_missing_asset_is_caught_but_not_a_404_page(
    serve_asgi: AsgiServers, page: Page, page_errors: PageErrors
) -> None:
    app, _ = tiny_app()
    base = await serve_asgi(app)
    response = await page.goto(base + "/no-such-page")
    assert response is not None and response.status == 404  # the test's to check, not an error
    await page.goto(base + "/broken-asset")
    assert "/static/missing.js" in await page_errors.wait_for("status of 404")
    page_errors.take()


async def test_console_error_is_caught(browser: Browser) -> None:
    errors = PageErrors()
    context = await browser.new_context()
    errors.watch(context)
    try:
        page = await context.new_page()
        await page.evaluate("console.error('logged by the page')")
        assert "logged by the page" in await errors.wait_for("logged by the page")
    finally:
        await context.close()


async def test_screenshot(
    serve_asgi: AsgiServers,
    page: Page,
    screenshot: Callable[[Page, str], Awaitable[Path]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMQ_SCREENSHOTS", raising=False)  # read when the page is shot
    app, _ = tiny_app()
    base = await serve_asgi(app)
    await page.goto(base + "/")
    await expect(page.locator("#count")).to_have_text("0")
    path = await screenshot(page, "harness-counter")
    assert path == tmp_path / "screenshots" / "harness-counter.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 800)
    with pytest.raises(ValueError, match="screenshot name"):
        await screenshot(page, "../escape")


def _query(text: str) -> str:
    return urlencode({"text": text})
