"""``--burst``: exit only when nothing is waiting, in flight or stale (issue 10, point 7).

The rule: a burst worker returns once no entry is unread, no entry is
pending in the group (in flight here or at another worker, or stale and due
for a reclaim), and nothing in the delayed set is due within
``BURST_HORIZON_S``. If only jobs scheduled further out remain, it says so
and returns rather than waiting for them.
"""

from __future__ import annotations

import anyio
import pytest
from structlog.testing import capture_logs

from streamq import App, JobStatus, Settings, Worker
from streamq.keys import GROUP
from streamq.worker import BURST_HORIZON_S
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio


async def test_burst_reclaims_a_crashed_workers_jobs_before_exiting(redis_url: str) -> None:
    """Before: the first pass drained its own (empty) PEL, skipped reclaim, and
    the worker returned while a crashed worker's three jobs sat pending."""
    settings = Settings(visibility_timeout_s=0.5, janitor_interval_s=0.1)
    app = App(queue_name(), redis_url=redis_url, settings=settings)
    async with app:

        @app.task(name="add")
        async def add(a: int, b: int) -> int:
            return a + b

        jobs = [await add.enqueue(i, i) for i in range(3)]
        redis = await app.redis()
        stream = app.keys.stream("default")
        taken = await redis.xreadgroup(GROUP, "crashed:1:abc", {stream: ">"}, count=10)
        assert len(taken[0][1]) == 3  # held by a consumer that will never ack them
        with anyio.fail_after(30):
            await Worker(app, burst=True).run()
        assert [await j.result(timeout=1) for j in jobs] == [0, 2, 4]
        assert int((await redis.xpending(stream, GROUP))["pending"]) == 0
        await drop_queue(app)


async def test_burst_does_not_wait_for_far_future_scheduled_jobs(app: App) -> None:
    @app.task(name="later")
    async def later() -> str:
        return "ran"

    @app.task(name="now")
    async def now() -> str:
        return "ran"

    scheduled = await later.enqueue_in(BURST_HORIZON_S + 3600)
    ready = await now.enqueue()
    with capture_logs() as logs, anyio.fail_after(20):
        await Worker(app, burst=True).run()
    (said,) = [r for r in logs if r["event"] == "burst: only scheduled jobs remain; exiting"]
    assert said["scheduled"] == 1 and said["next_due_in_s"] > BURST_HORIZON_S
    assert await ready.result(timeout=1) == "ran"
    assert await scheduled.status() == JobStatus.SCHEDULED
    redis = await app.redis()
    await redis.delete(app.keys.delayed, app.keys.job(scheduled.id))


async def test_burst_waits_for_a_retry_due_soon(app: App) -> None:
    attempts = 0

    @app.task(name="flaky", max_retries=2, backoff_base=0.3, backoff_cap=0.3)
    async def flaky() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("first attempt fails")
        return attempts

    job = await flaky.enqueue()
    with anyio.fail_after(30):
        await Worker(app, burst=True).run()
    assert await job.result(timeout=1) == 2


async def test_fetch_loop_logs_redis_errors_with_their_message(app: App) -> None:
    """redis-py 8's repr() of an error is only its category (server:ResponseError):
    the worker's log must carry str(exc), the message an operator can act on."""
    redis = await app.redis()
    await redis.set(app.keys.delayed, "not a zset")  # the burst check's ZCARD fails
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            worker = Worker(app, burst=True)
            tg.start_soon(worker.run)
            await wait_until(
                lambda: any(r["event"] == "fetch failed; retrying" for r in logs),
                timeout=20,
                description="the fetch loop's failure logged",
            )
            await redis.delete(app.keys.delayed)
    (first, *_) = [r for r in logs if r["event"] == "fetch failed; retrying"]
    assert "WRONGTYPE" in first["error"]


async def test_burst_check_sees_jobs_not_yet_read(app: App) -> None:
    """An entry nobody has read yet keeps a burst worker running.

    The check used to look only at pending entries and the delayed set: a
    retry the janitor promoted into its stream between the worker's empty
    fetch and the check was in neither, and the worker exited without
    running it (seen as a flaky "job failed" missing from a burst's logs).
    """
    from streamq.logging import get_logger
    from streamq.worker.burst import BurstCheck

    @app.task
    async def noop() -> None: ...

    check = BurstCheck(app, get_logger())
    redis = await app.redis()
    for stream in app.streams:  # as the worker's start makes them
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    assert await check.queue_done()
    await noop.enqueue()  # unread: not pending, not delayed
    assert not await check.queue_done()
    async with running_worker(app, burst=True) as worker:
        await wait_until(lambda: worker.processed == 1, description="the job ran")
