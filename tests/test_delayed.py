"""Delayed jobs: ``enqueue_in`` / ``enqueue_at``, retries waiting out their backoff,
and the janitor's promotion of due entries into their streams.

A delayed job sits in the ``delayed`` zset (score = due time in ms), not in a
stream, so no worker can fetch it early: XCLAIM/XADD cannot schedule (XCLAIM
TIME in the future is clamped to now).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from streamq import App, ConfigError, JobStatus, Settings, Worker
from streamq.janitor import Janitor
from streamq.keys import GROUP
from streamq.retry import Retry
from streamq.worker.soon import SoonDue
from tests.conftest import assert_no_key_leak, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fast_app(redis_url: str) -> AsyncIterator[App]:
    """An App whose janitor promotes every 0.05 s, with the key-leak check."""
    application = App(queue_name(), redis_url=redis_url, settings=Settings(janitor_interval_s=0.05))
    async with application:
        yield application
        await assert_no_key_leak(application)


def now_ms() -> int:
    return int(time.time() * 1000)


async def stream_len(app: App, priority: str = "default") -> int:
    redis = await app.redis()
    return int(await redis.xlen(app.keys.stream(priority)))


async def test_enqueue_in_is_scheduled_and_runs_only_once_due(fast_app: App) -> None:
    """A job enqueued 0.4 s ahead is ``scheduled``, in no stream, and runs after its due time.

    While scheduled it is only in the delayed set (score = due_ms), so no
    worker can fetch it; with a worker running, its handler starts no earlier
    than the due time. A delayed job written straight to its stream would
    run at once (started before due_ms).
    """
    started_ms: list[int] = []

    @fast_app.task(name="t")
    async def t(n: int) -> int:
        started_ms.append(now_ms())
        return n

    before = now_ms()
    job = await t.enqueue_in(0.4, 7)
    assert await job.status() == JobStatus.SCHEDULED
    info = await job.info()
    due_ms = int(info["due_ms"])
    assert before + 399 <= due_ms <= now_ms() + 400  # 399: float rounding of time + 0.4
    redis = await fast_app.redis()
    ((_, score),) = await redis.zrange(fast_app.keys.delayed, 0, -1, withscores=True)
    assert int(score) == due_ms
    assert await stream_len(fast_app) == 0
    async with running_worker(fast_app):
        assert await job.result(timeout=10) == 7
    assert started_ms[0] >= due_ms
    assert await redis.zcard(fast_app.keys.delayed) == 0


async def test_promoted_job_is_running_while_it_runs(fast_app: App) -> None:
    """A scheduled job, once promoted and fetched, is ``running`` with a ``started`` event.

    Like any other job, status goes scheduled → (queued) → running →
    succeeded, and the events stream shows when it started. If the start
    script only marks jobs ``queued``/``retrying`` as running, a promoted
    job keeps saying ``scheduled`` while it runs and has no ``started``
    event.
    """
    release = anyio.Event()
    running = anyio.Event()

    @fast_app.task(name="t")
    async def t() -> str:
        running.set()
        await release.wait()
        return "done"

    job = await t.enqueue_in(0.05)
    async with running_worker(fast_app):
        with anyio.fail_after(10):
            await running.wait()

        async def marked_running() -> bool:
            # The worker writes the mark lazily (within START_LINGER_S of the start).
            return await job.status() == JobStatus.RUNNING

        await wait_until(marked_running, 10, "the promoted job marked running")
        release.set()
        assert await job.result(timeout=5) == "done"
    redis = await fast_app.redis()
    kinds = [
        e[b"kind"]
        for _, e in await redis.xrange(fast_app.keys.events)
        if e.get(b"job") == job.id.encode()
    ]
    assert kinds == [b"scheduled", b"promoted", b"started", b"succeeded"]


async def test_enqueue_at_an_aware_datetime(fast_app: App) -> None:
    started_ms: list[int] = []

    @fast_app.task(name="t")
    async def t() -> str:
        started_ms.append(now_ms())
        return "ok"

    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
    job = await t.enqueue_at(when)
    assert await job.status() == JobStatus.SCHEDULED
    assert int((await job.info())["due_ms"]) == int(when.timestamp() * 1000)
    async with running_worker(fast_app):
        assert await job.result(timeout=10) == "ok"
    assert started_ms[0] >= int(when.timestamp() * 1000)


async def test_enqueue_at_in_the_past_is_queued_at_once(fast_app: App) -> None:
    @fast_app.task(name="t")
    async def t() -> str:
        return "ok"

    job = await t.enqueue_at(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert await job.status() == JobStatus.QUEUED
    assert await stream_len(fast_app) == 1
    await Worker(fast_app, burst=True).run()
    assert await job.result(timeout=1) == "ok"


async def test_enqueue_in_accepts_a_timedelta(fast_app: App) -> None:
    @fast_app.task(name="t")
    async def t() -> str:
        return "ok"

    before = now_ms()
    job = await t.enqueue_in(dt.timedelta(milliseconds=150))
    assert int((await job.info())["due_ms"]) >= before + 149  # float rounding
    with anyio.fail_after(10):
        await Worker(fast_app, burst=True).run()  # burst waits for the delayed set too
    assert await job.result(timeout=1) == "ok"


@pytest.mark.parametrize(
    "when",
    [dt.datetime(2030, 1, 1, 12, 0), "2030-01-01T12:00:00+00:00", 1_900_000_000],
    ids=["naive", "string", "number"],
)
async def test_enqueue_at_rejects_what_is_not_an_aware_datetime(app: App, when: object) -> None:
    """A naive datetime is ambiguous (whose local time?): refused, nothing written."""

    @app.task(name="t")
    async def t() -> None: ...

    with pytest.raises(ConfigError, match="timezone-aware"):
        await t.enqueue_at(when)  # type: ignore[arg-type]
    redis = await app.redis()
    assert [k async for k in redis.scan_iter(match=app.keys.pattern())] == []


@pytest.mark.parametrize("delay", [float("nan"), float("inf")])
async def test_enqueue_in_rejects_a_non_finite_delay(app: App, delay: float) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    with pytest.raises(ConfigError, match="finite"):
        await t.enqueue_in(delay)
    redis = await app.redis()
    assert [k async for k in redis.scan_iter(match=app.keys.pattern())] == []


async def test_two_janitors_racing_promote_each_due_job_exactly_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two janitors (separate clients) promoting 200 due jobs at once add 200 entries.

    The batch is shrunk to 7 so the two janitors' promote calls interleave
    many times. Each promote script removes a member and adds its entry in
    one step, so the sum of what both report is 200, the stream has exactly
    200 entries with 200 distinct job ids, and the delayed set is empty.
    A read-then-move promote (ZRANGEBYSCORE in one call, ZREM/XADD in
    another) would let both janitors move the same members: duplicates.
    """
    monkeypatch.setattr("streamq.promotion.BATCH", 7)
    name = queue_name()
    settings = Settings(janitor_interval_s=0.05)
    producer = App(name, redis_url=redis_url, settings=settings)
    one = App(name, redis_url=redis_url, settings=settings)
    two = App(name, redis_url=redis_url, settings=settings)

    @producer.task(name="t")
    async def t(n: int) -> int:
        return n

    async with producer, one, two:
        jobs = [await t.enqueue_in(0.2, n) for n in range(200)]
        latest_due = max([int((await j.info())["due_ms"]) for j in jobs])
        await wait_until(lambda: now_ms() > latest_due, 5, "every job to be due")
        counts: list[int] = []

        async def promote(app: App, owner: str) -> None:
            counts.append(await Janitor(app, owner).promote_due())

        async with anyio.create_task_group() as tg:
            tg.start_soon(promote, one, "janitor-one")
            tg.start_soon(promote, two, "janitor-two")
        assert sum(counts) == 200
        redis = await producer.redis()
        entries = await redis.xrange(producer.keys.stream("default"))
        assert len(entries) == 200
        assert {e[b"id"].decode() for _, e in entries} == {j.id for j in jobs}
        assert await redis.zcard(producer.keys.delayed) == 0
        await Worker(producer, concurrency=50, burst=True).run()
        assert sorted([await j.result(timeout=1) for j in jobs]) == list(range(200))
        await assert_no_key_leak(producer)


async def test_retry_waits_in_the_delayed_set_until_its_backoff_is_over(fast_app: App) -> None:
    """A failed attempt's retry sits in the delayed set, due at failure + delay.

    The first attempt raises ``Retry(delay=0.3)``. With no janitor running
    nothing promotes it, so it is visible: one delayed member whose score is
    the job's ``due_ms``, holding the entry with attempt 2; the stream has
    only the first entry; status ``retrying``. A burst worker with a janitor
    then promotes and runs it, no earlier than due. A retry XADDed straight
    to the stream (or XCLAIMed with a future TIME, which Redis clamps) would
    run at once.
    """
    started_ms: list[int] = []

    @fast_app.task(name="t", backoff_base=0.01)
    async def t() -> str:
        started_ms.append(now_ms())
        if len(started_ms) == 1:
            raise Retry(delay=0.3)
        return "second"

    job = await t.enqueue()
    async with running_worker(fast_app, janitor=False):

        async def retrying() -> bool:
            return await job.status() == JobStatus.RETRYING

        await wait_until(retrying, 10, "the first attempt to fail")
    info = await job.info()
    due_ms = int(info["due_ms"])
    assert started_ms[0] + 300 <= due_ms <= now_ms() + 300
    assert info["msg_id"] == "delayed"
    redis = await fast_app.redis()
    ((member, score),) = await redis.zrange(fast_app.keys.delayed, 0, -1, withscores=True)
    assert int(score) == due_ms
    priority, *flat = json.loads(member)
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    assert (priority, fields["id"], fields["attempt"]) == ("default", job.id, "2")
    assert await stream_len(fast_app) == 1
    with anyio.fail_after(10):
        await Worker(fast_app, burst=True).run()
    assert await job.result(timeout=1) == "second"
    assert started_ms[1] >= due_ms


async def test_backoff_delay_of_a_failed_attempt_is_within_its_bound(fast_app: App) -> None:
    """A plain exception retries after compute_backoff's delay: <= base for attempt 1."""
    calls: list[int] = []

    @fast_app.task(name="t", backoff_base=0.05, max_retries=2)
    async def t() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("again")
        return "third"

    job = await t.enqueue()
    async with running_worker(fast_app):
        assert await job.result(timeout=10) == "third"
    redis = await fast_app.redis()
    delays = [
        int(e[b"delay_ms"])
        for _, e in await redis.xrange(fast_app.keys.events)
        if e[b"kind"] == b"retried"
    ]
    assert len(delays) == 2
    assert 0 <= delays[0] <= 50 and 0 <= delays[1] <= 100


async def test_the_janitor_knows_when_the_earliest_delayed_job_is_due(app: App) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    scripts = await app.scripts()

    async def next_ms() -> int | None:
        return await scripts.promote_next_ms(
            delayed=app.keys.delayed, events=app.keys.events, dlq=app.keys.dlq,
            streams=app.streams, priorities=app.settings.priorities, group=GROUP,
        )  # fmt: skip

    assert await next_ms() is None  # nothing delayed
    await t.enqueue_in(600)
    later = await next_ms()
    assert later is not None and 500_000 < later <= 600_000
    await t.enqueue_in(60)
    sooner = await next_ms()
    assert sooner is not None and 50_000 < sooner <= 60_000  # the earliest counts
    redis = await app.redis()
    await redis.zadd(app.keys.delayed, {b"[]": 1})  # long overdue
    assert await next_ms() == 0
    await redis.zrem(app.keys.delayed, b"[]")


async def test_a_scheduled_job_starts_when_due_not_a_janitor_interval_later(
    redis_url: str,
) -> None:
    """Promotion does not wait for the janitor's next pass: a job that was in the
    delayed set at a pass is promoted when it is due. Here the interval is 60 s
    and the job is due 1 s after the worker's first pass; it used to start a
    whole interval later."""
    settings = Settings(janitor_interval_s=60)
    async with App(queue_name(), redis_url=redis_url, settings=settings) as app:
        ran = anyio.Event()

        @app.task(name="t")
        async def t() -> None:
            ran.set()

        job = await t.enqueue_in(1.0)
        async with running_worker(app):
            with anyio.fail_after(30):  # half the interval: no machine is that slow
                await ran.wait()
        assert await job.status() is not JobStatus.SCHEDULED
        await assert_no_key_leak(app)


async def test_a_retry_with_a_short_backoff_starts_when_due_not_at_the_janitors_wake(
    redis_url: str,
) -> None:
    """A retry due in 0.3 s can reach the delayed set after the janitor chose its
    sleep (up to an interval): the worker that recorded it promotes it when
    due. Here no janitor runs at all, so only that promotion can run it."""
    async with App(queue_name(), redis_url=redis_url) as app:
        attempts: list[float] = []

        @app.task(name="flaky", max_retries=3)
        async def flaky() -> str:
            attempts.append(time.monotonic())
            if len(attempts) == 1:
                raise Retry(delay=0.3)
            return "ok"

        async with running_worker(app, janitor=False):
            job = await flaky.enqueue()
            assert await job.result(timeout=30) == "ok"
        assert attempts[1] - attempts[0] >= 0.3  # not before its backoff
        await assert_no_key_leak(app)


async def test_only_retries_due_before_the_janitors_next_wake_are_noted(app: App) -> None:
    """``SoonDue`` keeps only what the janitor might be late for: a delay of 0 is
    already in its stream, and one of an interval or more is seen by the janitor's
    next wake (which sleeps until the earliest due job)."""
    soon = SoonDue(app, None)
    for delay_ms in (0, -5, 1000, 60_000):
        soon.note(delay_ms)
    assert len(soon) == 0
    soon.note(300)
    soon.note(999)
    assert len(soon) == 2
