"""Progress reports and the job context a handler sees."""

from __future__ import annotations

import importlib
from typing import Any

import anyio
import pytest

import streamq
from streamq import App, JobContext, JobProgress, JobStatus
from streamq.dlq import DeadLetters
from streamq.keys import GROUP
from streamq.progress import reset_current, set_current
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


async def test_a_stale_workers_progress_does_not_land_on_the_new_run(app: App) -> None:
    """Progress is fenced like an outcome: only the message's current owner and delivery.

    Worker "old" got delivery 1, paused, and lost the message to "new"
    (XCLAIM: delivery 2). The job hash says running either way, so a
    status check alone let old's late report land on new's run. With the
    stream, message id and delivery count in its context, progress checks
    the PEL (owner and delivery count) as complete does.
    """

    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    redis = await app.redis()
    stream = app.keys.stream("default")
    reply = await redis.xreadgroup(GROUP, "old", {stream: ">"}, count=1)
    msg_id = reply[0][1][0][0]
    await redis.hset(app.keys.job(job.id), mapping={"status": "running", "worker": "old"})
    await redis.xclaim(stream, GROUP, "new", 0, [msg_id])  # reclaimed: delivery 2

    async def report(worker: str, deliveries: int, percent: float) -> bool:
        context = JobContext(app, job.id, "t", 1, deliveries, worker, stream=stream, msg_id=msg_id)
        token = set_current(context)
        try:
            return await streamq.progress(percent, worker)
        finally:
            reset_current(token)

    assert not await report("old", 1, 10)
    assert not await report("new", 1, 15)  # the right consumer, an older delivery
    assert await job.progress() is None
    assert await report("new", 2, 20)
    reported = await job.progress()
    assert reported is not None and (reported.percent, reported.message) == (20.0, "new")
    events = [e for _, e in await redis.xrange(app.keys.events) if e[b"kind"] == b"progress"]
    assert [e[b"worker"] for e in events] == [b"new"]
    await redis.xack(stream, GROUP, msg_id)
    await redis.delete(app.keys.job(job.id))


async def test_a_retry_clears_the_progress_of_the_failed_attempt(app: App) -> None:
    """The next attempt starts with no progress, not the failed attempt's 50 %."""
    second = anyio.Event()
    release = anyio.Event()

    @app.task(name="flaky", max_retries=1, backoff_base=0)
    async def flaky() -> None:
        if streamq.current_job().attempt == 1:
            await streamq.progress(50, "half")
            raise RuntimeError("first attempt fails")
        second.set()
        await release.wait()

    job = await flaky.enqueue()
    async with running_worker(app):
        await second.wait()
        assert await job.progress() is None
        release.set()
        await job.result(timeout=10)


async def test_a_dlq_requeue_clears_the_old_progress(app: App) -> None:
    @app.task(name="doomed", max_retries=0)
    async def doomed() -> None:
        await streamq.progress(70, "almost")
        raise RuntimeError("no")

    job = await doomed.enqueue()
    async with running_worker(app):
        assert await job.wait(timeout=10) == JobStatus.FAILED
    assert await job.progress() is not None
    dlq = DeadLetters(app)
    (letter,) = await dlq.entries()
    await dlq.requeue(letter.id)
    assert await job.progress() is None
    async with running_worker(app):
        assert await job.wait(timeout=10) == JobStatus.FAILED


async def test_an_async_handler_gets_its_context_built_only_when_it_asks(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker defers an async handler's JobContext (16 frozen fields, more than a
    no-op job's own work) until ``current_job()`` asks for it: handlers that never ask
    cost no context, and one that asks twice gets the same one, with its run's fields."""
    built: list[JobContext] = []

    class Counting(JobContext):
        __slots__ = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    # streamq.progress is also the name of a function the package exports.
    monkeypatch.setattr(importlib.import_module("streamq.progress"), "JobContext", Counting)
    seen: list[tuple[JobContext, JobContext]] = []

    @app.task(name="quiet")
    async def quiet() -> None: ...

    @app.task(name="asks")
    async def asks() -> None:
        seen.append((streamq.current_job(), streamq.current_job()))

    await quiet.enqueue_many([()] * 5)
    job = await asks.enqueue()
    await streamq.Worker(app, burst=True).run()
    assert [(a is b, a.job_id, a.task, a.attempt) for a, b in seen] == [(True, job.id, "asks", 1)]
    assert built == [seen[0][0]]
