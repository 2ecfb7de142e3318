"""Progress reports and the job context a handler sees."""

from __future__ import annotations

import anyio
import pytest

import streamq
from streamq import App, JobProgress
from tests.conftest import running_worker, wait_until

pytestmark = pytest.mark.anyio


async def test_async_handler_reports_progress_to_the_hash_and_events(app: App) -> None:
    halfway = anyio.Event()
    release = anyio.Event()

    @app.task(name="resize")
    async def resize(n: int) -> str:
        ctx = streamq.current_job()
        assert ctx.task == "resize" and ctx.attempt == 1
        assert await streamq.progress(50, f"resized {n // 2}/{n}")
        halfway.set()
        await release.wait()
        await streamq.progress(100, "done")
        return ctx.job_id

    job = await resize.enqueue(10)
    async with running_worker(app):
        await halfway.wait()
        reported = await job.progress()
        assert reported is not None
        assert (reported.percent, reported.message) == (50.0, "resized 5/10")
        release.set()
        assert await job.result(timeout=10) == job.id
    final = await job.progress()
    assert isinstance(final, JobProgress) and final.percent == 100.0
    redis = await app.redis()
    events = [e for _, e in await redis.xrange(app.keys.events) if e[b"kind"] == b"progress"]
    assert [(e[b"progress"], e[b"message"]) for e in events] == [
        (b"50.0", b"resized 5/10"),
        (b"100.0", b"done"),
    ]


async def test_sync_handler_reports_progress_from_its_thread(app: App) -> None:
    @app.task
    def crunch() -> int:
        streamq.progress_sync(150, "clamped to 100")
        return streamq.current_job().deliveries

    job = await crunch.enqueue()
    async with running_worker(app):
        assert await job.result(timeout=10) == 1
    reported = await job.progress()
    assert reported is not None and reported.percent == 100.0


async def test_progress_outside_a_handler_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not inside a streamq handler"):
        await streamq.progress(10)
    with pytest.raises(RuntimeError):
        streamq.current_job()


async def test_no_progress_reported_is_none(app: App) -> None:
    @app.task
    async def quiet() -> None: ...

    job = await quiet.enqueue()
    assert await job.progress() is None
    async with running_worker(app):
        await job.result(timeout=10)

    async def finished() -> bool:
        return (await job.status()).final

    await wait_until(finished, description="job final")
