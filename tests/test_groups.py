"""A consumer group destroyed under a worker (``XGROUP DESTROY``) is recreated.

Every read of the group can meet ``NOGROUP``: the idle worker's blocking
XREADGROUP, the reclaim pass's XPENDING. The worker recreates the group and
carries on. Where it recreates it matters: the streams keep acked entries as
the audit history, so a group recreated at id 0 would run every retained job
again, and one created at ``$`` would skip jobs not yet delivered. The group
restarts just before the oldest entry whose job is unfinished.
"""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
from structlog.testing import capture_logs

from streamq import App, Settings
from streamq.keys import GROUP
from streamq.worker.fetch import Fetcher
from tests.conftest import (
    assert_no_key_leak,
    drop_queue,
    queue_name,
    running_worker,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def destroy_groups(app: App) -> None:
    redis = await app.redis()
    for stream in app.streams:
        if await redis.exists(stream):
            await redis.xgroup_destroy(stream, GROUP)


async def test_an_idle_worker_recreates_a_destroyed_group(app: App) -> None:
    """The group goes while the worker blocks in XREADGROUP: the next job still runs, once."""
    runs: list[int] = []

    @app.task(name="t")
    async def t(n: int) -> int:
        runs.append(n)
        return n

    first = await t.enqueue(1)
    with capture_logs() as logs:
        async with running_worker(app, block_ms=500):
            assert await first.result(timeout=10) == 1
            await anyio.sleep(0.2)  # blocked in XREADGROUP again
            await destroy_groups(app)
            second = await t.enqueue(2)
            assert await second.result(timeout=10) == 2
            await anyio.sleep(0.2)
    assert runs == [1, 2], "a finished job ran again (the group restarted too early)"
    recreated = [e for e in logs if e["event"] == "consumer group missing; recreating it"]
    assert recreated
    assert not [e for e in logs if e["event"] == "fetch failed; retrying"]


async def test_an_idle_worker_recreates_a_deleted_stream(app: App) -> None:
    """The stream key itself goes (DEL) while the worker blocks in XREADGROUP.

    Redis 7.0 unblocks the read with ``UNBLOCKED the stream key no longer
    exists`` (Valkey and Redis 7.2+ answer NOGROUP): either way the group is
    recreated at once, not logged as a failed fetch and retried after a backoff.
    """

    @app.task(name="t")
    async def t(n: int) -> int:
        return n

    redis = await app.redis()

    async def blocked() -> bool:
        return int((await redis.info("clients"))["blocked_clients"]) > 0

    with capture_logs() as logs:
        async with running_worker(app, block_ms=2000):
            assert await (await t.enqueue(1)).result(timeout=10) == 1
            await wait_until(blocked, 10, "the worker to block in XREADGROUP")
            await redis.delete(*app.streams)
            assert await (await t.enqueue(2)).result(timeout=10) == 2
    recreated = [e for e in logs if e["event"] == "consumer group missing; recreating it"]
    assert recreated
    assert not [e for e in logs if e["event"] == "fetch failed; retrying"]


async def test_a_group_destroyed_between_workers_restarts_at_the_unfinished_jobs(
    app: App,
) -> None:
    """Jobs enqueued but not delivered when the group went are run; finished ones are not."""
    runs: list[int] = []

    @app.task(name="t")
    async def t(n: int) -> int:
        runs.append(n)
        return n

    done = await t.enqueue_many([(1,), (2,)])
    async with running_worker(app):
        for job in done:
            await job.result(timeout=10)
    waiting = await t.enqueue_many([(3,), (4,)])
    await destroy_groups(app)
    async with running_worker(app):
        assert [await job.result(timeout=10) for job in waiting] == [3, 4]
        await anyio.sleep(0.2)
    assert runs == [1, 2, 3, 4]


async def test_a_busy_worker_recreates_a_destroyed_group_without_rerunning_history(
    redis_url: str,
) -> None:
    """The group goes while a busy worker reads through the fetch script: the script
    must not recreate it at id 0 (that reran every retained, finished job); the
    worker recreates it at the restart point, as on the blocking path.

    Many queued jobs keep the worker on the non-blocking ``fetch`` path, and the
    reclaim pass (which also meets NOGROUP) runs only at start. Jobs in flight
    when the group goes may run again (their ack finds no pending entry): only
    jobs already finished must not."""
    settings = Settings(janitor_interval_s=60.0)
    app = App(queue_name(), redis_url=redis_url, settings=settings)
    runs: Counter[int] = Counter()

    @app.task(name="t")
    async def t(n: int) -> int:
        runs[n] += 1
        await anyio.sleep(0.01)
        return n

    async with app:
        jobs = await t.enqueue_many([(n,) for n in range(300)])
        with capture_logs() as logs:
            async with running_worker(app, concurrency=8):
                await wait_until(lambda: len(runs) >= 40, 10, "some jobs to finish")
                infos = [await job.info() for job in jobs]
                finished = {n for n, info in enumerate(infos) if info.get("status") == "succeeded"}
                await destroy_groups(app)
                assert [await job.result(timeout=30) for job in jobs] == list(range(300))
                await anyio.sleep(0.2)
        assert len(finished) < 300, "every job finished before the group was destroyed"
        assert finished, "no job finished before the group was destroyed"
        rerun = sorted(n for n in finished if runs[n] > 1)
        assert rerun == [], f"{len(rerun)} finished jobs ran again (the group restarted at 0)"
        assert set(runs) == set(range(300))
        recreated = [e for e in logs if e["event"] == "consumer group missing; recreating it"]
        assert recreated
        await assert_no_key_leak(app)
        await drop_queue(app)


async def test_reclaim_recreates_a_destroyed_group(app: App) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, "w", 100)
    await fetcher.ensure_groups()
    await destroy_groups(app)
    assert await fetcher.reclaim(10) == []
    redis = await app.redis()
    for stream in app.streams:
        assert [g["name"] for g in await redis.xinfo_groups(stream)] == [GROUP.encode()]


async def test_the_first_entry_of_a_job_waiting_to_retry_is_history(app: App) -> None:
    """A job waiting in the delayed set to retry is unfinished, but its old entry is not."""
    runs: list[str] = []

    @app.task(name="flaky", max_retries=5, backoff_base=100.0, backoff_cap=100.0)
    async def flaky() -> None:
        runs.append("flaky")
        raise RuntimeError("not yet")

    @app.task(name="t")
    async def t(n: int) -> int:
        runs.append(f"t{n}")
        return n

    job = await flaky.enqueue()
    async with running_worker(app):
        await wait_until(lambda: runs == ["flaky"], 10, "the first attempt")

        async def retrying() -> bool:
            return (await job.info()).get("status") == "retrying"

        await wait_until(retrying, 10, "the retry to be scheduled")
    await destroy_groups(app)
    later = await t.enqueue(1)
    async with running_worker(app):
        assert await later.result(timeout=10) == 1
        await anyio.sleep(0.2)
    assert runs == ["flaky", "t1"]
    redis = await app.redis()
    await redis.delete(app.keys.job(job.id), app.keys.delayed)


async def test_entries_without_a_job_hash_count_as_history_only_past_the_result_ttl(
    app: App,
) -> None:
    """No job hash: an entry older than the result TTL finished (its hash expired);
    a recent one was never a streamq job, so it is delivered (and dead-lettered)."""
    from streamq import Worker

    @app.task(name="t")
    async def t() -> None: ...

    redis = await app.redis()
    stream = app.keys.stream("default")
    ancient = {b"id": b"expired-long-ago", b"task": b"t", b"payload": b"{}"}
    await redis.xadd(stream, ancient, id="1000-0")  # type: ignore[arg-type]
    garbage_id = await redis.xadd(stream, {b"garbage": b"1"})
    # No group on the stream: as after XGROUP DESTROY (or a stream written by hand).
    await Worker(app, burst=True).run()
    ((_, dead),) = await redis.xrange(app.keys.dlq)
    assert dead[b"dlq_origin_id"] == garbage_id
