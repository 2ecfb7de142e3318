"""Chaos fixtures: the figures reporter, shown in the terminal summary of every run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos.support import FIGURES, SCALE, SEED, emit_figures

Report = Callable[..., None]


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """``report("C1", lost=0, ...)``: record one scenario's figures (see ``emit_figures``)."""

    def emit(scenario: str, **figures: Any) -> None:
        emit_figures(request.node, scenario, figures)

    return emit


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
