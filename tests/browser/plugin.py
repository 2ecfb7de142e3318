"""Browser tests are run or reported as NOT RUN, loudly; never silently passed.

Loaded by tests/conftest.py (``pytest_plugins``). A test marked ``browser``
(or using the ``chromium_path`` fixture) needs a system Chromium: Playwright
cannot download its own browsers here, so it drives Debian's ``chromium``.
Without one the test is skipped with a reason that starts with ``NOT_RUN``
and the terminal summary ends with a warning block counting them; with
``STREAMQ_REQUIRE_BROWSER=1`` (set by .ci/run) a missing browser fails the
run instead.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.not_run import skip_or_fail, warn_not_run

NOT_RUN = "BROWSER TESTS NOT RUN"
CHROMIUM_ENV = "STREAMQ_CHROMIUM"
REQUIRE_ENV = "STREAMQ_REQUIRE_BROWSER"
INSTALL_HINT = "install it: apt-get install chromium"
_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> tuple[str | None, str]:
    """The Chromium executable, or None and why not.

    ``$STREAMQ_CHROMIUM``, when set, is the only candidate (so it can also
    hide a Chromium that is on PATH); otherwise the first of ``_NAMES`` on PATH.
    """
    explicit = os.environ.get(CHROMIUM_ENV)
    if explicit:
        found = shutil.which(explicit)
        return found, "" if found else f"${CHROMIUM_ENV}={explicit!r} is not an executable"
    for name in _NAMES:
        if found := shutil.which(name):
            return found, ""
    return None, f"none of {', '.join(_NAMES)} on PATH"


def require_chromium() -> str:
    """The Chromium path; else skip the test (or fail it under ``STREAMQ_REQUIRE_BROWSER=1``)."""
    path, why = find_chromium()
    if path:
        return path
    skip_or_fail(f"{NOT_RUN}: no Chromium ({why}; {INSTALL_HINT})", REQUIRE_ENV)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture: a browser test without a browser never starts a server.
    if item.get_closest_marker("browser") is not None:
        require_chromium()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    _, why = find_chromium()
    warn_not_run(terminalreporter, NOT_RUN, [
        (f"{NOT_RUN}: no Chromium ({INSTALL_HINT})", True),
        (f"{{n}} browser test(s) did not run: {why}.", False),
        (f"Set {CHROMIUM_ENV}=/path/to/chromium to use another binary.", False),
    ])  # fmt: skip
