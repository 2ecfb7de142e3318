"""What a browser test needs besides Playwright: a served ASGI app, page errors, screenshots.

The fixtures in conftest.py wrap these; they are plain objects so a test can
also use them directly (the harness's own tests do).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import anyio
import uvicorn
from anyio.abc import TaskGroup
from playwright.async_api import BrowserContext, ConsoleMessage, Page, WebError

REPO = Path(__file__).resolve().parents[2]
# Screenshots for the README land here only when asked (STREAMQ_SCREENSHOTS=1,
# `make screenshots`), so an ordinary test run never rewrites tracked files.
SCREENSHOTS = REPO / "docs" / "screenshots"
SCREENSHOTS_ENV = "STREAMQ_SCREENSHOTS"
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 10_000
START_TIMEOUT_S = 10.0
# A payload a page must show as text: the <script> runs if inserted as HTML by the
# parser, and the onerror runs even when the HTML is swapped in through innerHTML.
XSS_PAYLOAD = (
    '<script>window.__xss = "script"</script><img src="data:," onerror="window.__xss = \'img\'">'
)

ASGIApp = Callable[..., Any]
LOAD_FAILED = "Failed to load resource"


class PageErrorsFound(AssertionError):
    """A page raised an uncaught JS error or logged console.error."""


class PageErrors:
    """Collects uncaught JS errors and console errors of every page of a browser context.

    The ``page`` fixture fails a test that leaves any (at teardown); a test
    that provokes one on purpose calls ``wait_for`` / ``take`` to claim it.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._changed = anyio.Event()

    def watch(self, context: BrowserContext) -> None:
        context.on("weberror", self._on_web_error)
        context.on("console", self._on_console)

    def _add(self, message: str) -> None:
        self.messages.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    def _on_web_error(self, error: WebError) -> None:
        self._add(f"uncaught {error.error.name}: {error.error.message}")

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if url.endswith("/favicon.ico"):  # the browser asks on its own; not the page's fault
            return
        page = message.page
        if message.text.startswith(LOAD_FAILED) and page is not None and url == page.url:
            return  # the navigation's own status (a 404 page): the test checks the response
        self._add(f"console.error: {message.text} ({url})")

    async def wait_for(self, fragment: str, timeout: float = TIMEOUT_MS / 1000) -> str:
        """The first error containing ``fragment``, waiting for it up to ``timeout`` s."""
        with anyio.fail_after(timeout):
            while True:
                for message in self.messages:
                    if fragment in message:
                        return message
                await self._changed.wait()

    def take(self) -> list[str]:
        """The errors so far, claimed (they no longer fail the test)."""
        taken, self.messages = self.messages, []
        return taken

    def check(self) -> None:
        if self.messages:
            lines = "\n  ".join(self.messages)
            raise PageErrorsFound(f"the page reported {len(self.messages)} error(s):\n  {lines}")


class _ServerErrors(logging.Handler):
    """Exceptions uvicorn logged while serving (a 500 the page may hide)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


class AsgiServers:
    """Serves ASGI apps with uvicorn on loopback ports inside a task group.

    ``await servers(app)`` returns the base URL once the app's lifespan has
    started; ``stop()`` asks every server to exit. Exceptions logged by the
    servers are kept in ``errors`` (the ``serve_asgi`` fixture fails the test on them).
    """

    def __init__(self, task_group: TaskGroup) -> None:
        self._task_group = task_group
        self._servers: list[uvicorn.Server] = []
        self._errors = _ServerErrors()

    @property
    def errors(self) -> list[str]:
        return self._errors.messages

    def __enter__(self) -> AsgiServers:
        logging.getLogger("uvicorn.error").addHandler(self._errors)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("uvicorn.error").removeHandler(self._errors)

    async def __call__(self, app: ASGIApp, *, lifespan: Literal["on", "off"] = "on") -> str:
        # A socket bound here, not a free port looked up and bound later: no race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan=lifespan,  # "on": a lifespan that fails stops the server (auto hides it)
            log_config=None,  # leave the test run's logging alone
            access_log=False,
            timeout_graceful_shutdown=2,  # an open event stream must not hold teardown
        )
        server = uvicorn.Server(config)
        self._servers.append(server)
        finished = anyio.Event()

        async def run() -> None:
            try:
                await server.serve(sockets=[sock])
            finally:
                sock.close()
                finished.set()

        self._task_group.start_soon(run)
        with anyio.fail_after(START_TIMEOUT_S):
            while not server.started:
                if finished.is_set():
                    raise RuntimeError(f"the ASGI app {app!r} did not start (its lifespan failed?)")
                await anyio.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True


def screenshot_dir() -> Path | None:
    """docs/screenshots when STREAMQ_SCREENSHOTS=1, else None (the test's tmp dir)."""
    return SCREENSHOTS if os.environ.get(SCREENSHOTS_ENV, "") not in ("", "0") else None


async def screenshot(page: Page, name: str, directory: Path) -> Path:
    """A full-page PNG of ``page`` at ``directory/<name>.png``, stable across runs."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ValueError(f"screenshot name {name!r}: use lowercase letters, digits, - and _")
    path = directory / f"{name}.png"  # Playwright creates the directory
    await page.screenshot(path=path, full_page=True, animations="disabled", caret="hide")
    return path
