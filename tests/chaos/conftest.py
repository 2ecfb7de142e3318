"""Chaos fixtures: the figures reporter (the summary is ``tests/chaos/plugin.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos.support import emit_figures

Report = Callable[..., None]


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """``report("C1", lost=0, ...)``: record one scenario's figures (see ``emit_figures``)."""

    def emit(scenario: str, **figures: Any) -> None:
        emit_figures(request.node, scenario, figures)

    return emit
