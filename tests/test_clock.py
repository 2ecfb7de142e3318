"""Due times and promotion follow the server's clock, not a client's.

Clocks differ between machines. A janitor whose clock runs an hour fast
must not promote a job scheduled an hour out; a producer whose clock is off
must not shift a relative delay (``enqueue_in``) or misjudge whether an
absolute due time (``enqueue_at``) is in the future; a worker's clock must
not shift a retry's backoff. Each case fakes the client's clock here
(``time.time`` in this process) and checks what the scripts did against
the server's ``TIME``.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from streamq import App, JobStatus
from streamq.janitor import Janitor
from streamq.keys import GROUP
from streamq.scripts import Outcome

pytestmark = pytest.mark.anyio

HOUR_S = 3600.0
_real_time = time.time


def skew(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    monkeypatch.setattr(time, "time", lambda: _real_time() + seconds)


async def server_ms(app: App) -> int:
    redis = await app.redis()
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


async def due_scores(app: App) -> list[float]:
    redis = await app.redis()
    return [score for _, score in await redis.zrange(app.keys.delayed, 0, -1, withscores=True)]


async def test_a_janitor_an_hour_fast_does_not_promote_a_job_due_in_an_hour(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(name="later")
    async def later() -> None: ...

    job = await later.enqueue_in(HOUR_S)
    skew(monkeypatch, HOUR_S + 60)  # the janitor's machine runs fast
    assert await Janitor(app, "fast-janitor").promote_due() == 0
    assert len(await due_scores(app)) == 1
    assert await job.status() == JobStatus.SCHEDULED
    monkeypatch.undo()
    await (await app.redis()).delete(app.keys.job(job.id))


async def test_enqueue_in_counts_the_delay_from_the_servers_clock(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer an hour fast (or slow): the job is still due ``delay`` after now."""

    @app.task(name="later")
    async def later() -> None: ...

    jobs = []
    for offset in (HOUR_S, -HOUR_S):
        skew(monkeypatch, offset)
        before = await server_ms(app)
        jobs.append(await later.enqueue_in(600))
        after = await server_ms(app)
        monkeypatch.undo()
        (score,) = await due_scores(app)
        assert before + 600_000 <= score <= after + 600_000, (offset, score - before)
        await (await app.redis()).delete(app.keys.delayed)
    for job in jobs:
        assert await job.status() == JobStatus.SCHEDULED
        await (await app.redis()).delete(app.keys.job(job.id))


async def test_enqueue_at_a_future_time_is_delayed_even_when_the_producer_runs_late(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Due in 10 minutes by the server; the producer's clock says that is past."""

    @app.task(name="later")
    async def later() -> None: ...

    when = dt.datetime.fromtimestamp((await server_ms(app)) / 1000 + 600, tz=dt.UTC)
    skew(monkeypatch, HOUR_S)
    job = await later.enqueue_at(when)
    monkeypatch.undo()
    assert await job.status() == JobStatus.SCHEDULED
    redis = await app.redis()
    assert not await redis.exists(app.keys.stream("default"))
    assert await due_scores(app) == [int(when.timestamp() * 1000)]
    await redis.delete(app.keys.job(job.id))


async def test_a_retrys_due_time_is_the_servers_time_plus_the_delay(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker an hour fast records a 60 s backoff as due 60 s from the server's now."""

    @app.task(name="flaky")
    async def flaky() -> None: ...

    job = await flaky.enqueue()
    redis = await app.redis()
    stream = app.keys.stream("default")
    reply = await redis.xreadgroup(GROUP, "w", {stream: ">"}, count=1)
    msg_id = reply[0][1][0][0]
    scripts = await app.scripts()
    skew(monkeypatch, HOUR_S)
    before = await server_ms(app)
    outcome = Outcome(
        stream=stream, job_key=app.keys.job(job.id), msg_id=msg_id, deliveries=1,
        job_id=job.id, task="flaky", attempt=1, status="retry",
        result_or_error_type="ValueError", error="boom", traceback="", duration_ms=1,
        retry_delay_ms=60_000, priority="default",
    )  # fmt: skip
    assert await scripts.complete(
        app.keys.events, [outcome], delayed=app.keys.delayed, dlq=app.keys.dlq, group=GROUP,
        consumer="w", now_ms=int(time.time() * 1000), result_ttl_ms=60_000,
    ) == [1]  # fmt: skip
    after = await server_ms(app)
    monkeypatch.undo()
    (score,) = await due_scores(app)
    assert before + 60_000 <= score <= after + 60_000
    assert before + 60_000 <= int(await redis.hget(app.keys.job(job.id), "due_ms")) <= score
    await redis.delete(app.keys.job(job.id), app.keys.delayed)
