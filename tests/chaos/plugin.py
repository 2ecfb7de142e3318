"""The chaos figures in the terminal summary of every run (loaded by tests/conftest.py).

A plugin, not a hook in tests/chaos/conftest.py: with pytest-xdist the
controller process collects nothing, so only conftests it loads at start
(the root one and its ``pytest_plugins``) run their summary hooks there. The
figures come back from the workers in the test reports' ``user_properties``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.support import FIGURES, SCALE, SEED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == FIGURES
    ]
    if lines:
        terminalreporter.section(f"streamq chaos figures (scale {SCALE}, seed {SEED})")
        for line in lines:
            terminalreporter.write_line(line)
