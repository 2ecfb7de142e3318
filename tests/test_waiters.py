"""Many ``job.result()`` waiters share one reader of the events stream.

A blocking XREAD holds its connection for the whole block (DESIGN.md), so a
waiter that reads the events stream on a pooled connection takes that
connection away from enqueue and from the worker's heartbeat. These tests
put thousands of waiters on an App with an 8-connection pool and check that
enqueue stays fast, one connection at most blocks in XREAD, every result
arrives, and a running job's heartbeat still happens (nothing is stolen).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from streamq import App, Job, JobStatus
from streamq.keys import GROUP
from streamq.settings import Settings
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio

WAITERS = 5_000
POOL = 8
ENQUEUE_DEADLINE_S = 5.0


async def blocked_xreads(redis_url: str) -> int:
    """Connections blocked in XREAD on the server (the result waiters' reads)."""
    control = Redis.from_url(redis_url)
    try:
        clients = await control.client_list()
    finally:
        await control.aclose()
    return sum(1 for c in clients if c.get("cmd") == "xread" and "b" in c.get("flags", ""))


async def timed_enqueue(enqueue: Any, *args: Any) -> tuple[Job[Any], float]:
    started = time.monotonic()
    with anyio.fail_after(ENQUEUE_DEADLINE_S):
        job = await enqueue(*args)
    return job, time.monotonic() - started


async def test_thousands_of_waiters_leave_the_pool_to_enqueue(redis_url: str) -> None:
    """5,000 waiters, a pool of 8: enqueue stays well under 5 s, all results arrive.

    With one pooled connection per waiter in XREAD BLOCK, every connection of
    the pool is blocked for 2 s at a time and thousands of waiters queue for
    the next one: an enqueue waits behind them for minutes (fails here after
    5 s). With one reader per App, at most one connection blocks in XREAD.
    """
    app = App(queue_name(), redis_url=redis_url, settings=Settings(max_connections=POOL))

    @app.task(name="echo")
    async def echo(n: int) -> int:
        return n

    async with app:
        try:
            jobs = await echo.enqueue_many([(i,) for i in range(WAITERS)])
            results: dict[str, int] = {}

            async def collect(job: Job[int]) -> None:
                results[job.id] = await job.result(timeout=120)

            latencies: list[float] = []
            async with anyio.create_task_group() as tg:
                for job in jobs:
                    tg.start_soon(collect, job)
                await anyio.sleep(0.5)  # the waiters are reading their job hashes
                for i in range(5):
                    extra, took = await timed_enqueue(echo.enqueue, WAITERS + i)
                    latencies.append(took)
                    jobs.append(extra)
                    tg.start_soon(collect, extra)
                # Once every waiter has read its job hash, waiting holds no
                # pooled connection but the one reader's.
                pool: Any = (await app.redis()).connection_pool
                await wait_until(
                    lambda: len(pool._in_use_connections) <= 1, 20, "the waiters to settle"
                )
                assert await blocked_xreads(redis_url) <= 1
                async with running_worker(app, concurrency=50):
                    # Enqueue while the results pour in (every woken waiter
                    # reads its job hash on the pool).
                    with anyio.fail_after(120):
                        while len(results) < WAITERS:
                            extra, took = await timed_enqueue(echo.enqueue, len(jobs))
                            latencies.append(took)
                            jobs.append(extra)
                            tg.start_soon(collect, extra)
                            assert await blocked_xreads(redis_url) <= 1
                            await anyio.sleep(0.05)
                    await wait_until(lambda: len(results) == len(jobs), 30, "every result")
            assert max(latencies) < ENQUEUE_DEADLINE_S
            assert results == {job.id: i for i, job in enumerate(jobs)}
        finally:
            await drop_queue(app)


async def test_a_running_jobs_heartbeat_is_not_starved_by_waiters(redis_url: str) -> None:
    """2,000 waiters on the worker's App: its heartbeat still beats; nothing is stolen.

    The worker's heartbeat uses the App's pool. With 2,000 waiters each
    holding a pooled connection in XREAD BLOCK, the heartbeat queues behind
    them, the running job idles past its visibility timeout and the second
    worker reclaims it: the handler runs twice.
    """
    name = queue_name()
    visibility_s = 3.0
    busy = App(
        name,
        redis_url=redis_url,
        settings=Settings(max_connections=POOL, visibility_timeout_s=visibility_s),
    )
    thief = App(name, redis_url=redis_url, visibility_timeout=visibility_s)
    runs: list[str] = []
    release = anyio.Event()

    def register(app: App) -> Any:
        @app.task(name="long")
        async def long(tag: str) -> str:
            runs.append(tag)
            with anyio.move_on_after(visibility_s + 2.5):  # past a reclaim pass
                await release.wait()
            return tag

        return long

    long = register(busy)
    register(thief)
    async with busy, thief:
        try:
            job = await long.enqueue("x")
            results: list[str] = []
            async with running_worker(busy, concurrency=2), anyio.create_task_group() as tg:
                await wait_until(lambda: runs == ["x"], 10, "the long job to start")

                async def wait_result() -> None:
                    results.append(await job.result(timeout=60))

                for _ in range(2_000):
                    tg.start_soon(wait_result)
                async with running_worker(thief, concurrency=1):
                    await wait_until(lambda: len(results) == 2_000, 60, "every waiter's result")
            assert runs == ["x"], "the running job was reclaimed by the other worker"
            assert results == ["x"] * 2_000
            assert await job.status() == JobStatus.SUCCEEDED
            redis = await busy.redis()
            events = await redis.xrange(busy.keys.events)
            assert not [e for _, e in events if e[b"kind"] == b"reclaimed"]
            pending = await redis.xpending(busy.streams[1], GROUP)
            assert pending["pending"] == 0
        finally:
            release.set()
            await drop_queue(busy)


async def test_the_reader_role_passes_on_when_its_waiter_is_cancelled(app: App) -> None:
    """The first waiter reads for everyone; cancelling it hands the read to the next."""
    release = anyio.Event()

    @app.task(name="gated")
    async def gated(n: int) -> int:
        await release.wait()
        return n

    first, second = await gated.enqueue_many([(1,), (2,)])
    results: list[int] = []
    async with anyio.create_task_group() as tg:
        leader_scope = anyio.CancelScope()
        tg.start_soon(_run_in, leader_scope, first.result(timeout=30))
        await wait_until(lambda: app.result_waiters._leader is not None, 5, "a reader")

        async def wait_second() -> None:
            results.append(await second.result(timeout=30))

        tg.start_soon(wait_second)
        await wait_until(lambda: app.result_waiters.waiting == 2, 5, "two waiters")
        await anyio.sleep(0.1)  # the first one is blocked in XREAD
        leader_scope.cancel()  # mid-read: its connection is dropped, the role passes on
        await wait_until(lambda: app.result_waiters.waiting == 1, 5, "the first to leave")
        async with running_worker(app):
            release.set()
            await wait_until(lambda: results == [2], 10, "the second result")
    assert app.result_waiters.waiting == 0
    assert app.result_waiters._client is None  # the reader's connection went back


async def _run_in(scope: anyio.CancelScope, awaitable: Any) -> None:
    with scope:
        await awaitable


async def test_a_short_timeout_reader_hands_over_to_a_longer_waiter(app: App) -> None:
    @app.task(name="slow")
    async def slow() -> str:
        await anyio.sleep(0.6)
        return "done"

    @app.task(name="never")
    async def never() -> None: ...

    hopeless = await never.with_options(priority="low").enqueue()
    job = await slow.enqueue()
    outcomes: list[object] = []

    async def short() -> None:
        with pytest.raises(TimeoutError):
            await hopeless.result(timeout=0.2)
        outcomes.append("timed out")

    async def long() -> None:
        outcomes.append(await job.result(timeout=20))

    async with anyio.create_task_group() as tg:
        tg.start_soon(short)
        await wait_until(lambda: app.result_waiters._leader is not None, 5, "a reader")
        tg.start_soon(long)
        async with running_worker(app, concurrency=1):
            await wait_until(lambda: len(outcomes) == 2, 10, "both waiters")
    assert outcomes == ["timed out", "done"]
    redis = await app.redis()
    await redis.delete(app.keys.job(hopeless.id))


async def test_a_final_status_without_its_event_is_found_by_the_recheck(app: App) -> None:
    """Events can be trimmed before the reader gets to them: the re-check finds the status."""

    @app.task(name="never")
    async def never() -> None: ...

    job = await never.enqueue()
    redis = await app.redis()

    async def finish_quietly() -> None:
        await anyio.sleep(0.2)
        key = app.keys.job(job.id)
        await redis.hset(key, mapping={"status": "succeeded", "result": "7"})
        await redis.pexpire(key, 60_000)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_quietly)
        assert await job.result(timeout=10) == 7
    assert time.monotonic() - started < 5


async def test_a_job_hash_that_disappears_while_waited_for_is_job_not_found(app: App) -> None:
    from streamq import JobNotFound

    @app.task(name="never")
    async def never() -> None: ...

    job = await never.enqueue()
    redis = await app.redis()

    async def expire() -> None:
        await anyio.sleep(0.2)
        await redis.delete(app.keys.job(job.id))

    async with anyio.create_task_group() as tg:
        tg.start_soon(expire)
        with pytest.raises(JobNotFound):
            await job.result(timeout=10)


async def test_closing_the_app_wakes_its_waiters(redis_url: str) -> None:
    app = App(queue_name(), redis_url=redis_url)

    @app.task(name="never")
    async def never() -> None: ...

    try:
        jobs = await never.enqueue_many([()] * 3)
        errors: list[BaseException] = []

        async def wait(job: Job[None]) -> None:
            try:
                await job.result(timeout=30)
            except RuntimeError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(wait, job)
            await wait_until(lambda: app.result_waiters.waiting == 3, 5, "three waiters")
            await anyio.sleep(0.1)
            with anyio.fail_after(5):
                await app.close()
        assert len(errors) == 3 and "closed" in str(errors[0])
        assert app.result_waiters.waiting == 0
        # The App works again after close, and so does waiting.
        with pytest.raises(TimeoutError):
            await jobs[0].result(timeout=0.1)
    finally:
        await drop_queue(app)
        await app.close()
