"""Browser tests never pass silently: pytest runs on small test files, in process.

Without a Chromium they are skipped and the summary says so loudly (or, under
STREAMQ_REQUIRE_BROWSER=1, they fail); a JS error a page leaves unclaimed, or
an exception in the served app, fails the test that caused it.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
pytest_plugins = ["tests.browser.plugin"]
from tests.browser.conftest import *  # noqa: F403 (the fixtures under test)
"""
INI = """
[pytest]
markers = browser: drives Chromium
filterwarnings = error
"""

NEEDS_BROWSER = """
import pytest

@pytest.mark.browser
def test_marked():
    pass

@pytest.mark.anyio
async def test_uses_page(page):
    pass
"""

LEAVES_ERRORS = """
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

async def test_page_error_left_unclaimed(page, page_errors):
    await page.set_content("<p>hi</p>")
    await page.evaluate("setTimeout(() => { throw new Error('left behind') }, 0)")
    await page_errors.wait_for("left behind")

async def test_server_exception(page, serve_asgi):
    async def broken(request):
        raise RuntimeError("handler blew up")
    base = await serve_asgi(Starlette(routes=[Route("/", broken)]))
    response = await page.goto(base + "/")
    assert response is not None and response.status == 500
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    return pytester


@pytest.fixture
def no_chromium(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMQ_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("STREAMQ_REQUIRE_BROWSER", raising=False)


@pytest.mark.usefixtures("no_chromium")
def test_missing_chromium_is_reported_not_run(project: pytest.Pytester) -> None:
    project.makepyfile(NEEDS_BROWSER)
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*!!! BROWSER TESTS NOT RUN: 2 !!!*",
            "BROWSER TESTS NOT RUN: no Chromium (install it: apt-get install chromium)",
            "2 browser test(s) did not run: $STREAMQ_CHROMIUM='/nonexistent/chromium'*",
        ]
    )


@pytest.mark.usefixtures("no_chromium")
def test_missing_chromium_fails_when_required(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMQ_REQUIRE_BROWSER", "1")
    project.makepyfile(NEEDS_BROWSER)
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*STREAMQ_REQUIRE_BROWSER is set*"])


@pytest.mark.browser
def test_page_and_server_errors_fail_the_test(project: pytest.Pytester) -> None:
    project.makepyfile(LEAVES_ERRORS)
    result = project.runpytest("-p", "no:cacheprovider")
    # Each test body passes; its fixture's teardown then fails it.
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*PageErrorsFound: the page reported 1 error(s):*",
            "*uncaught Error: left behind*",
        ]
    )
    result.stdout.fnmatch_lines(["*the served app logged errors:*", "*handler blew up*"])
