"""Cancelling jobs: waiting ones never run, running ones stop, finished ones stay.

Given a job in each place it can be (unread in its stream, scheduled in the
delayed set, waiting for a retry, run by an async or a sync handler, final),
when ``job.cancel()`` is called, then the job ends ``cancelled`` with its
event indexed and a TTL, the handler never runs (or stops within about a
second), nothing is retried or dead-lettered, and the worker goes on.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from streamq import (
    App,
    CancelResult,
    Job,
    JobCancelled,
    JobStatus,
    Settings,
    current_job,
    empty_queue,
)
from streamq.janitor import Janitor
from streamq.keys import GROUP
from streamq.replay import Replay
from tests.conftest import assert_no_key_leak, drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fast_app(redis_url: str) -> AsyncIterator[App]:
    """An App whose janitor promotes due jobs every 50 ms."""
    application = App(queue_name(), redis_url=redis_url, settings=Settings(janitor_interval_s=0.05))
    async with application:
        yield application
        await assert_no_key_leak(application)
        await drop_queue(application)


async def kinds(app: App, job_id: str) -> list[str]:
    return [kind for _, kind in await app.job(job_id).event_ids()]


async def assert_cancelled(app: App, job_id: str) -> None:
    """Status cancelled, its event indexed in the hash, a TTL, and result() says so."""
    job = app.job(job_id)
    assert await job.status() == JobStatus.CANCELLED
    assert "cancelled" in await kinds(app, job_id)
    redis = await app.redis()
    assert 0 < await redis.pttl(app.keys.job(job_id)) <= app.settings.result_ttl_s * 1000
    with pytest.raises(JobCancelled):
        await job.result(timeout=1)


async def test_a_queued_job_cancelled_before_any_worker_never_runs(app: App) -> None:
    """The unread entry is deleted in the cancel script, with its fields kept in the
    'cancelled' event; a worker started afterwards runs the next job, not this one."""
    ran: list[str] = []

    @app.task(name="record")
    async def record(name: str) -> str:
        ran.append(name)
        return name

    job = await record.enqueue("cancelled one")
    msg_id = (await job.info())["msg_id"]
    assert await job.cancel() == CancelResult.CANCELLED
    await assert_cancelled(app, job.id)
    redis = await app.redis()
    assert await redis.xrange(app.keys.stream("default"), msg_id, msg_id) == []

    story = await Replay(app).story(job.id)
    (event,) = [r for r in story if r.kind == "cancelled" and r.source == "event"]
    assert event.fields["where"] == "stream" and event.fields["msg"] == msg_id
    entry = json.loads(event.fields["entry"])
    assert "cancelled one" in dict(zip(entry[::2], entry[1::2], strict=True))["payload"]

    async with running_worker(app):
        after = await record.enqueue("next")
        assert await after.result(timeout=10) == "next"
    assert ran == ["next"]
    assert await job.cancel() == CancelResult.ALREADY_FINAL  # a second call changes nothing
    assert "cancel-requested" not in await kinds(app, job.id)


async def test_a_scheduled_job_cancelled_never_runs_after_its_due_time(fast_app: App) -> None:
    """The delayed member goes in the cancel script: the janitor has nothing to promote."""
    app = fast_app
    ran: list[str] = []

    @app.task(name="record")
    async def record(name: str) -> str:
        ran.append(name)
        return name

    job = await record.enqueue_in(0.3, "scheduled")
    assert await job.status() == JobStatus.SCHEDULED
    assert await job.cancel() == CancelResult.CANCELLED
    await assert_cancelled(app, job.id)
    redis = await app.redis()
    assert await redis.zcard(app.keys.delayed) == 0
    async with running_worker(app):
        later = await record.enqueue_in(0.4, "later")  # due after the cancelled one
        assert await later.result(timeout=10) == "later"
    assert ran == ["later"]
    assert "promoted" not in await kinds(app, job.id)


async def test_a_job_waiting_for_its_retry_is_cancelled_in_the_delayed_set(app: App) -> None:
    """A failed attempt's retry waits in the delayed set: cancelling removes it there."""
    attempts: list[int] = []

    @app.task(name="flaky", max_retries=3, backoff_base=60)
    async def flaky() -> None:
        attempts.append(current_job().attempt)
        raise ValueError("not yet")

    job = await flaky.enqueue()
    async with running_worker(app):
        await wait_until(_status_is(app, job.id, JobStatus.RETRYING), 10, "a retry scheduled")
        assert await job.cancel() == CancelResult.CANCELLED
    await assert_cancelled(app, job.id)
    assert attempts == [1]
    redis = await app.redis()
    assert await redis.zcard(app.keys.delayed) == 0


def _status_is(app: App, job_id: str, status: JobStatus) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await app.job(job_id).status() == status

    return check


async def test_a_running_async_job_stops_within_a_second_and_is_not_retried(app: App) -> None:
    """The worker's watcher cancels the handler's scope; the job is acked as cancelled
    (no retry, no DLQ, the request consumed) and the worker runs the next job."""
    started = anyio.Event()
    stopped: list[str] = []

    @app.task(name="long", max_retries=3)
    async def long() -> str:
        started.set()
        try:
            await anyio.sleep(60)
        finally:
            stopped.append("cancelled")
        return "finished"

    @app.task(name="quick")
    async def quick(n: int) -> int:
        return n

    job = await long.enqueue()
    async with running_worker(app, concurrency=2) as worker:
        with anyio.fail_after(10):
            await started.wait()
        asked = time.monotonic()
        assert await job.cancel() == CancelResult.REQUESTED
        assert await job.cancel() == CancelResult.REQUESTED  # idempotent: one request
        assert await job.wait(timeout=5) == JobStatus.CANCELLED
        took_s = time.monotonic() - asked
        assert took_s < 2.0, took_s
        assert stopped == ["cancelled"]
        # The worker goes on with other jobs.
        assert await (await quick.enqueue(7)).result(timeout=10) == 7
        assert worker.in_flight == 0
    await assert_cancelled(app, job.id)
    story = await kinds(app, job.id)
    assert story.count("cancel-requested") == 1
    assert "retried" not in story and "failed" not in story and "dead" not in story
    redis = await app.redis()
    assert await redis.xlen(app.keys.dlq) == 0
    assert await redis.zcard(app.keys.delayed) == 0
    assert await redis.exists(app.keys.cancels) == 0  # the request was taken up
    pending = await redis.xpending(app.keys.stream("default"), "workers")
    assert pending["pending"] == 0


async def test_a_running_sync_handler_is_told_and_stops_cooperatively(app: App) -> None:
    """A sync handler cannot be interrupted: it sees ``cancel_requested`` and raises
    through ``raise_if_cancelled``; the job ends cancelled, not failed or retried."""
    started = threading.Event()

    @app.task(name="sync_long", max_retries=3)
    def sync_long() -> str:
        context = current_job()
        started.set()
        deadline = time.monotonic() + 20
        while not context.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert context.stop_requested
        context.raise_if_cancelled()
        return "ignored the request"

    job = await sync_long.enqueue()
    async with running_worker(app):
        await wait_until(started.is_set, 10, "the handler to start")
        assert await job.cancel() == CancelResult.REQUESTED
        assert await job.wait(timeout=5) == JobStatus.CANCELLED
    await assert_cancelled(app, job.id)
    assert "retried" not in await kinds(app, job.id)


async def test_a_sync_handler_that_ignores_the_request_records_its_real_outcome(
    app: App,
) -> None:
    """Cancelling is cooperative for sync handlers: one that returns a value after the
    request has done its work, and is recorded as succeeded."""
    started = threading.Event()

    @app.task(name="stubborn")
    def stubborn() -> str:
        context = current_job()
        started.set()
        deadline = time.monotonic() + 20
        while not context.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        return "done anyway"

    job = await stubborn.enqueue()
    async with running_worker(app):
        await wait_until(started.is_set, 10, "the handler to start")
        assert await job.cancel() == CancelResult.REQUESTED
        assert await job.result(timeout=5) == "done anyway"
    assert await job.status() == JobStatus.SUCCEEDED
    # The request nobody took up is bounded: the janitor drops it once old.
    redis = await app.redis()
    assert await redis.zscore(app.keys.cancels, job.id) is not None
    await redis.zadd(app.keys.cancels, {job.id: 0})  # as if it were a day old
    await Janitor(app, "test").run_once()
    assert await redis.exists(app.keys.cancels) == 0


async def test_cancelling_a_finished_or_unknown_job_changes_nothing(app: App) -> None:
    """No status, event, TTL or request is written for a final or unknown job."""

    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    job = await add.enqueue(1, 2)
    async with running_worker(app):
        assert await job.result(timeout=10) == 3
    before = await app.job(job.id).event_ids()
    redis = await app.redis()
    ttl = await redis.pttl(app.keys.job(job.id))
    assert await job.cancel() == CancelResult.ALREADY_FINAL
    assert await job.status() == JobStatus.SUCCEEDED
    assert await app.job(job.id).event_ids() == before
    assert await redis.pttl(app.keys.job(job.id)) <= ttl
    assert await app.job("no-such-job").cancel() == CancelResult.NOT_FOUND
    assert await redis.exists(app.keys.cancels) == 0


async def test_empty_queue_removes_waiting_jobs_only(app: App) -> None:
    """Queued and scheduled jobs (of one task, then all) go; the running job stays."""
    release = anyio.Event()
    started = anyio.Event()

    @app.task(name="a")
    async def a() -> str:
        started.set()
        await release.wait()
        return "a"

    @app.task(name="b")
    async def b() -> str:
        return "b"

    running = await a.enqueue()
    async with running_worker(app, concurrency=1):
        with anyio.fail_after(10):
            await started.wait()
        # The worker writes 'running' lazily (within 10 ms of the start).
        await wait_until(lambda: _is_running(running), description="the first job marked running")
        queued_a = [await a.enqueue() for _ in range(3)]
        queued_b = [await b.enqueue() for _ in range(2)]
        later_a, later_b = await a.enqueue_in(600), await b.enqueue_in(600)
        assert await empty_queue(app, task="b", batch=1) == 3
        for job in [*queued_b, later_b]:
            assert await job.status() == JobStatus.CANCELLED
        for job in [*queued_a, later_a]:
            assert await job.status() in (JobStatus.QUEUED, JobStatus.SCHEDULED)
        assert await empty_queue(app, batch=2) == 4
        for job in [*queued_a, later_a]:
            assert await job.status() == JobStatus.CANCELLED
        assert await running.status() == JobStatus.RUNNING
        release.set()
        assert await running.result(timeout=10) == "a"
    redis = await app.redis()
    assert await redis.zcard(app.keys.delayed) == 0
    assert await empty_queue(app) == 0


async def _is_running(job: Job[Any]) -> bool:
    return await job.status() == JobStatus.RUNNING


async def test_recording_a_cancelled_run_is_fenced_and_idempotent(app: App) -> None:
    """``cancelled.lua`` acks only the delivery it was given (invariant 3: a worker that
    lost the message cannot end the job), and a repeated call (redis-py retrying it)
    answers 2 and writes nothing more (invariant 9)."""

    @app.task(name="t")
    async def t() -> None:
        return None

    job = await t.enqueue()
    stream = app.keys.stream("default")
    scripts = await app.scripts()
    ((_, ((msg_id, _),)),) = await scripts.fetch([stream], GROUP, "c1", 1)  # as a worker does
    assert await job.cancel() == CancelResult.REQUESTED

    async def record(consumer: str, deliveries: int) -> int:
        return await scripts.cancelled(
            stream=stream, events=app.keys.events, job_key=app.keys.job(job.id),
            cancels=app.keys.cancels, group=GROUP, consumer=consumer, msg_id=msg_id,
            deliveries=deliveries, job_id=job.id, task="t", attempt=1,
            now_ms=int(time.time() * 1000), result_ttl_ms=60_000, duration_ms=5,
        )  # fmt: skip

    assert await record("c2", 1) == 0  # not its message
    assert await record("c1", 2) == 0  # another delivery of it
    assert await job.status() == JobStatus.QUEUED
    assert await record("c1", 1) == 1
    story = await kinds(app, job.id)
    assert await record("c1", 1) == 2
    assert await kinds(app, job.id) == story
    assert story.count("cancelled") == 1 and story.count("lost-ownership") == 2
    await assert_cancelled(app, job.id)
    redis = await app.redis()
    assert await redis.exists(app.keys.cancels) == 0
    assert (await redis.xpending(stream, GROUP))["pending"] == 0


@pytest.mark.parametrize("where", ["queued", "scheduled", "running"])
@pytest.mark.parametrize("ttl_from", ["task", "job"])
async def test_a_cancelled_job_keeps_its_own_result_ttl(
    fast_app: App, where: str, ttl_from: str
) -> None:
    """A cancelled job's hash lives its task's ``result_ttl`` (or the one it was
    enqueued with), as a finished one does, not the App's default (a day)."""
    app = fast_app
    started = anyio.Event()

    @app.task(name="short_lived", result_ttl=30 if ttl_from == "task" else None)
    async def short_lived() -> None:
        started.set()
        await anyio.sleep(60)

    task = short_lived.with_options(result_ttl=30) if ttl_from == "job" else short_lived
    if where == "running":
        job = await task.enqueue()
        async with running_worker(app):
            with anyio.fail_after(10):
                await started.wait()
            await job.cancel()
            assert await job.wait(timeout=10) == JobStatus.CANCELLED
    else:
        job = await (task.enqueue_in(600) if where == "scheduled" else task.enqueue())
        assert await job.cancel() == CancelResult.CANCELLED
    assert await job.status() == JobStatus.CANCELLED
    ttl_ms = await (await app.redis()).pttl(app.keys.job(job.id))
    assert 0 < ttl_ms <= 30_000, ttl_ms
