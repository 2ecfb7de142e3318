"""Job handles: status, result with timeout, waiting on events rather than polling."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from streamq import App, JobFailed, JobStatus
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio


async def command_calls(app: App, command: str) -> int:
    redis = await app.redis()
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_result_times_out_with_timeout_error(app: App) -> None:
    @app.task
    async def never_run() -> None: ...

    job = await never_run.enqueue()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await job.result(timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert await job.status() == JobStatus.QUEUED


async def test_result_blocks_on_the_events_stream_instead_of_polling(app: App) -> None:
    """A 2.5 s wait costs a handful of reads: XREAD BLOCK slices, not a poll loop."""

    @app.task
    async def never_run() -> None: ...

    job = await never_run.enqueue()
    before = [await command_calls(app, command) for command in ("hgetall", "hmget")]
    with pytest.raises(TimeoutError):
        await job.result(timeout=2.5)
    after = [await command_calls(app, command) for command in ("hgetall", "hmget")]
    assert sum(after) - sum(before) <= 4


async def test_result_wakes_as_soon_as_the_job_finishes(app: App) -> None:
    release = anyio.Event()

    @app.task
    async def gated() -> str:
        await release.wait()
        return "done"

    job = await gated.enqueue()
    results: list[str] = []
    async with running_worker(app), anyio.create_task_group() as tg:

        async def waiter() -> None:
            results.append(await job.result(timeout=20))

        for _ in range(3):  # several waiters on one job all wake
            tg.start_soon(waiter)
        await anyio.lowlevel.checkpoint()
        release.set()
    assert results == ["done"] * 3


async def test_result_of_a_finished_job_returns_at_once(app: App) -> None:
    @app.task
    async def quick() -> list[int]:
        return [1, 2]

    job = await quick.enqueue()
    async with running_worker(app):
        await job.result(timeout=10)
    with anyio.fail_after(1):
        assert await job.result(timeout=0.01) == [1, 2]


async def test_failed_job_raises_job_failed_every_time(app: App) -> None:
    @app.task(max_retries=0)
    async def bad() -> None:
        raise KeyError("missing")

    job = await bad.enqueue()
    async with running_worker(app):
        for _ in range(2):
            with pytest.raises(JobFailed, match="KeyError"):
                await job.result(timeout=10)
    assert await job.wait(timeout=1) == JobStatus.FAILED


async def test_result_expires_after_result_ttl(redis_url: str) -> None:
    app = App(queue_name(), redis_url=redis_url, result_ttl=0.2)

    @app.task
    async def f() -> int:
        return 1

    async with app:
        job = await f.enqueue()
        async with running_worker(app):
            assert await job.result(timeout=10) == 1
        redis = await app.redis()
        assert 0 < await redis.pttl(app.keys.job(job.id)) <= 200

        async def expired() -> bool:
            return not await redis.exists(app.keys.job(job.id))

        await wait_until(expired, timeout=5, description="the job hash to expire")
        await drop_queue(app)
