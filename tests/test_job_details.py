"""``Job.details()``: a job's hash and its stream entry as one typed snapshot.

The arguments and headers are read from wherever the job's entry is: its
priority stream (queued, finished), the delayed set (scheduled, waiting for
a retry) or the DLQ; timestamps become UTC datetimes; arguments are
converted to the handler's annotations when the task is registered.
"""

from __future__ import annotations

import datetime as dt

import pytest

from streamq import App, JobDetails, JobNotFound, JobStatus, Retry, Settings
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio

WHEN = dt.datetime(2026, 11, 1, 12, 30, tzinfo=dt.UTC)


def close_to_now(at: dt.datetime | None) -> bool:
    now = dt.datetime.now(dt.UTC)
    return at is not None and at.tzinfo is dt.UTC and abs((now - at).total_seconds()) < 30


async def test_a_queued_job_shows_its_typed_arguments_and_headers(app: App) -> None:
    """Queued: arguments from the stream entry, converted (a datetime stays one)."""

    @app.task(name="remind", priority="high")
    async def remind(who: str, at: dt.datetime, *, note: str = "") -> None: ...

    job = await remind.with_options(headers={"tenant": "acme"}).enqueue(
        "ann", WHEN, note="bring cake"
    )
    details = await job.details()
    assert isinstance(details, JobDetails)
    assert (details.id, details.task, details.status) == (job.id, "remind", JobStatus.QUEUED)
    assert (details.priority, details.attempts) == ("high", 0)
    assert details.args == ["ann", WHEN] and isinstance(details.args[1], dt.datetime)
    assert details.kwargs == {"note": "bring cake"}
    assert details.headers == {"tenant": "acme"}
    assert close_to_now(details.enqueued_at)
    assert details.started_at is details.finished_at is details.due_at is None
    assert details.result is details.error is details.worker is None


async def test_a_scheduled_job_is_found_in_the_delayed_set(app: App) -> None:
    """Scheduled: the entry is a delayed member (score due_ms); due_at is its due time."""

    @app.task(name="later")
    async def later(n: int) -> None: ...

    other = await later.enqueue_at(WHEN + dt.timedelta(days=3650), 1)
    job = await later.enqueue_at(WHEN + dt.timedelta(days=3650), 2)
    details = await job.details()
    assert details.status is JobStatus.SCHEDULED
    assert details.args == [2] and details.kwargs == {}, "the member with the same score is not it"
    assert details.due_at == WHEN + dt.timedelta(days=3650)
    assert (await other.details()).args == [1]
    await drop_queue(app)


async def test_finished_jobs_show_result_error_worker_and_times(redis_url: str) -> None:
    """Succeeded and failed (after a retry through the delayed set): result or
    error, the worker, attempts and every timestamp; the entry still yields args."""
    app = App(
        queue_name(), settings=Settings.from_env(redis_url=redis_url, janitor_interval_s=0.02)
    )
    async with app:

        @app.task(name="double", retry=Retry(intervals=[0.05]))
        async def double(n: int) -> int:
            if n < 0:
                raise ValueError("negative")
            return 2 * n

        ok, bad = await double.enqueue(21), await double.enqueue(-1)
        async with running_worker(app) as worker:
            assert await ok.wait(timeout=10) is JobStatus.SUCCEEDED
            assert await bad.wait(timeout=10) is JobStatus.FAILED
        done, failed = await ok.details(), await bad.details()
        assert (done.result, done.args, done.attempts) == (42, [21], 1)
        assert done.worker == worker.consumer and done.error is None
        assert done.duration_ms is not None and done.duration_ms >= 0
        assert done.enqueued_at is not None and done.started_at is not None
        assert done.finished_at is not None
        assert done.enqueued_at <= done.started_at <= done.finished_at + dt.timedelta(seconds=1)
        assert close_to_now(done.finished_at)
        assert failed.status is JobStatus.FAILED and failed.attempts == 2
        assert (failed.error_type, failed.error, failed.args) == ("ValueError", "negative", [-1])
        assert failed.traceback and "ValueError" in failed.traceback
        assert failed.due_at is not None, "when its retry was due"
        await drop_queue(app)


async def test_a_job_waiting_for_its_retry_is_found_in_the_delayed_set(app: App) -> None:
    @app.task(name="flaky", retry=Retry(intervals=[3600]))
    async def flaky(n: int) -> None:
        raise ValueError("down")

    job = await flaky.enqueue(7)
    async with running_worker(app):

        async def retrying() -> bool:
            return await job.status() is JobStatus.RETRYING

        await wait_until(retrying, description="the job waits for its retry")
    details = await job.details()
    assert details.status is JobStatus.RETRYING and details.args == [7]
    assert details.error == "down" and details.due_at is not None
    assert details.due_at - dt.datetime.now(dt.UTC) > dt.timedelta(minutes=59)
    await drop_queue(app)


async def test_a_trimmed_entry_leaves_args_none(app: App) -> None:
    @app.task(name="gone")
    async def gone(n: int) -> None: ...

    job = await gone.enqueue(1)
    redis = await app.redis()
    info = await job.info()
    await redis.xdel(app.keys.stream("default"), info["msg_id"])
    details = await job.details()
    assert details.status is JobStatus.QUEUED
    assert details.args is details.kwargs is details.headers is None
    await drop_queue(app)


async def test_an_unknown_job_is_job_not_found(app: App) -> None:
    with pytest.raises(JobNotFound):
        await app.job("nope").details()


async def test_a_failed_jobs_arguments_are_read_from_the_dlq_once_its_stream_entry_is_gone(
    app: App,
) -> None:
    @app.task(name="fails", max_retries=0)
    async def fails(n: int) -> None:
        raise ValueError("no")

    job = await fails.enqueue(5)
    async with running_worker(app):
        assert await job.wait(timeout=10) is JobStatus.FAILED
    redis = await app.redis()
    await redis.xdel(app.keys.stream("default"), (await job.info())["msg_id"])
    assert (await job.details()).args == [5]
    await redis.delete(app.keys.dlq)
    assert (await job.details()).args is None
