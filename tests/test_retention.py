"""Retention trims history, never work (DESIGN.md invariant 2).

XTRIM by age alone would drop pending entries, and XCLAIM/XAUTOCLAIM then
silently drop them from the PEL on Valkey: a job accepted and never run. It
would also drop entries no consumer has read yet (a backlog older than the
retention). Without the pending and last-delivered bounds in trim.lua, the
checks below that every held or unread job still runs fail.
"""

from __future__ import annotations

import pytest

from streamq import App, JobStatus, Settings, Worker
from streamq.janitor import Janitor
from streamq.keys import GROUP
from streamq.worker.fetch import Fetcher
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio

NOW = Settings(retention_s=0, visibility_timeout_s=0.3, janitor_interval_s=0.05)


async def make_app(redis_url: str, settings: Settings = NOW, name: str | None = None) -> App:
    app = App(name or queue_name(), redis_url=redis_url, settings=settings)

    @app.task(name="noop")
    async def noop(n: int) -> int:
        return n

    return app


async def enqueue(app: App, count: int) -> list[str]:
    jobs = []
    task = app.tasks["noop"]
    for start in range(0, count, 100):
        jobs += await task.enqueue_many([(i,) for i in range(start, min(count, start + 100))])
    return [j.id for j in jobs]


async def test_pending_entries_survive_trimming_and_still_run(redis_url: str) -> None:
    app = await make_app(redis_url)
    async with app:
        redis = await app.redis()
        stream = app.keys.stream("default")
        first = await enqueue(app, 250)
        await Worker(app, burst=True, concurrency=50).run()
        held = await enqueue(app, 250)
        ghost = Fetcher(redis, await app.scripts(), app.keys, app.settings, "ghost", 100)
        taken = await ghost.fetch(50)  # a worker that took 50 jobs and died
        assert [m.fields[b"id"].decode() for m in taken if m.fields] == held[:50]
        # A worker that runs the other 200 but does not reclaim the ghost's 50 yet
        # (a long visibility timeout; --burst would wait for them, since 37d47b9).
        patient = await make_app(redis_url, NOW.with_changes(visibility_timeout_s=60), app.name)
        async with patient, running_worker(patient, concurrency=50, janitor=False):
            for job_id in held[50:]:
                assert await patient.job(job_id).result(timeout=20) is not None
        # Now: 250 acked, then 50 pending to a dead consumer, then 200 acked.

        await Janitor(app, "janitor").trim()
        assert int(await redis.xlen(stream)) < 500, "acked history before the pending was kept"
        for message in taken:
            assert await redis.xrange(stream, message.msg_id, message.msg_id), (
                "trimmed a pending entry"
            )
        pending = await redis.xpending(stream, GROUP)
        assert pending["pending"] == 50 and pending["min"] == taken[0].msg_id

        async with running_worker(app, concurrency=50):
            for job_id in held[:50]:
                assert await app.job(job_id).result(timeout=20) is not None
        assert int((await redis.xpending(stream, GROUP))["pending"]) == 0
        assert await app.job(first[-1]).status() == JobStatus.SUCCEEDED
        await drop_queue(app)


async def test_unread_backlog_is_never_trimmed(redis_url: str) -> None:
    app = await make_app(redis_url)
    async with app:
        redis = await app.redis()
        stream = app.keys.stream("default")
        await enqueue(app, 300)
        await Janitor(app, "janitor").trim()
        assert await redis.xlen(stream) == 300
        # Events have no group to hold a trim back, only the floor of their last
        # EVENTS_KEEP_S seconds (what a result waiter reading now may need).
        assert await redis.xlen(app.keys.events) == 300
        await Worker(app, burst=True, concurrency=50).run()
        await Janitor(app, "janitor").trim()
        assert await redis.xlen(stream) < 300
        await drop_queue(app)


async def test_length_limit_trims_to_about_maxlen(redis_url: str) -> None:
    settings = Settings(retention_s=None, retention_maxlen=100)
    app = await make_app(redis_url, settings)
    async with app:
        redis = await app.redis()
        await enqueue(app, 400)
        await Worker(app, burst=True, concurrency=50).run()
        await Janitor(app, "janitor").trim()
        length = int(await redis.xlen(app.keys.stream("default")))
        assert 100 <= length < 400
        await drop_queue(app)


async def test_no_retention_keeps_everything(redis_url: str) -> None:
    app = await make_app(redis_url, Settings(retention_s=None))
    async with app:
        await enqueue(app, 200)
        await Worker(app, burst=True, concurrency=50).run()
        assert await Janitor(app, "janitor").trim() == 0
        assert await (await app.redis()).xlen(app.keys.stream("default")) == 200
        await drop_queue(app)


async def test_one_pass_trims_more_than_one_xtrim_call_would(redis_url: str) -> None:
    """XTRIM MINID ~ stops after 10,000 entries a call (100 nodes of 100).

    With one call per pass, a stream growing faster than 10,000 entries per
    trim interval (1,000 jobs/s at the default 10 s) is never trimmed back:
    a 1,000,000-job bench run kept 700,000 of them with a 5 s retention.
    """
    app = await make_app(redis_url)
    async with app:
        redis = await app.redis()
        stream = app.keys.stream("default")
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(25_000):
                pipe.xadd(stream, {"v": "1"})
            await pipe.execute()
        # Every entry read and acked: nothing pending, nothing unread.
        await redis.xgroup_create(stream, GROUP, id="$", mkstream=True)
        await Janitor(app, "janitor").trim()
        assert await redis.xlen(stream) < 1_000
        await drop_queue(app)
