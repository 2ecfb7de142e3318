"""End to end in one test: enqueue, a worker runs it, the result comes back."""

from __future__ import annotations

import pytest

from streamq import App, JobStatus
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


async def test_enqueue_run_result(app: App) -> None:
    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    job = await add.enqueue(2, 3)
    assert await job.status() == JobStatus.QUEUED
    async with running_worker(app):
        assert await job.result(timeout=10) == 5
    assert await job.status() == JobStatus.SUCCEEDED
