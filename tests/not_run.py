"""Tests that need a binary this machine may lack: skipped loudly, or failed in CI.

A missing binary (Chromium, Redis 7.0) skips its tests with a reason that
starts with a "... NOT RUN" label, and the run ends with a warning block
counting them; with the plugin's ``STREAMQ_REQUIRE_*`` variable set (as
``.ci/run`` does) the tests fail instead. Never silently passed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NoReturn

import pytest


def skip_or_fail(message: str, require_env: str) -> NoReturn:
    """Skip the running test, or fail it when ``require_env`` is set (and not 0)."""
    if os.environ.get(require_env, "") not in ("", "0"):
        pytest.fail(f"{message}, and {require_env} is set", pytrace=False)
    pytest.skip(message)


def warn_not_run(
    terminalreporter: pytest.TerminalReporter, label: str, lines: Sequence[tuple[str, bool]]
) -> None:
    """The end-of-run block for the tests whose skip reason carries ``label``:
    ``lines`` are (text, bold); ``{n}`` in a line is the count. Nothing when none."""
    not_run = [
        report
        for outcome in ("skipped", "error")
        for report in terminalreporter.stats.get(outcome, [])
        if label in str(getattr(report, "longrepr", ""))
    ]
    if not not_run:
        return
    terminalreporter.write_sep("!", f"{label}: {len(not_run)}", red=True, bold=True)
    for text, bold in lines:
        terminalreporter.write_line(text.format(n=len(not_run)), red=True, bold=bold)
    terminalreporter.write_sep("!", red=True, bold=True)
