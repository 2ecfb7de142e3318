"""``job.watch()``: a job's progress and status as they happen, woken by its events."""

from __future__ import annotations

import anyio
import pytest

from streamq import App, JobStatus, progress
from streamq.job import JobUpdate
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


async def test_watch_yields_progress_and_status_until_the_job_ends(app: App) -> None:
    """Each progress report and status change comes out once, in order, then it ends."""
    gates = [anyio.Event(), anyio.Event()]

    @app.task(name="steps")
    async def steps() -> str:
        await progress(30, "a third")
        await gates[0].wait()
        await progress(60, "two thirds")
        await gates[1].wait()
        return "done"

    job = await steps.enqueue()
    seen: list[JobUpdate] = []
    async with running_worker(app):
        with anyio.fail_after(20):
            async for update in job.watch():
                seen.append(update)
                if update.progress is not None and update.progress.percent == 30:
                    gates[0].set()
                if update.progress is not None and update.progress.percent == 60:
                    gates[1].set()
    assert seen[0].status in (JobStatus.QUEUED, JobStatus.RUNNING)
    percents = [u.progress.percent for u in seen if u.progress is not None]
    assert 30 in percents and 60 in percents
    assert percents == sorted(percents)
    assert seen[-1].status == JobStatus.SUCCEEDED and seen[-1].final
    assert len(seen) == len({(u.status, u.progress) for u in seen}), "an update came twice"
    assert await job.result(timeout=1) == "done"


async def test_watch_of_a_finished_job_yields_its_final_state_once(app: App) -> None:
    @app.task(name="quick")
    async def quick() -> int:
        return 1

    job = await quick.enqueue()
    async with running_worker(app):
        await job.result(timeout=10)
    updates = [u async for u in job.watch()]
    assert [u.status for u in updates] == [JobStatus.SUCCEEDED]


async def test_watch_times_out_like_result(app: App) -> None:
    @app.task(name="never-run")
    async def never() -> None:
        return None

    job = await never.enqueue()
    with pytest.raises(TimeoutError):
        async for _ in job.watch(timeout=0.5):
            pass
    await app.job(job.id).status()
