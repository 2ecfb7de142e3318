"""No job hash stays non-final without a TTL forever once its message is gone.

A job hash that is not final has no TTL: the job's message brings it to an
outcome, which sets one. When the message is lost (XDEL'd or trimmed by
hand, acked outside streamq, its delayed member removed), nothing ever
would. The janitor finds such hashes (SCAN, bounded per pass, continuing
across passes) and marks each one ``dead`` (``MessageLost``) with a TTL and
an event, once its last change is older than ``lost_job_age_s``. The check
is exact, so a live job, however old, is never marked.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import pytest

from streamq import App, JobFailed, JobStatus, Settings
from streamq.janitor import Janitor
from streamq.keys import GROUP
from tests.conftest import assert_no_key_leak, queue_name

pytestmark = pytest.mark.anyio

AGE_S = 0.2


@pytest.fixture
async def lost_app(redis_url: str) -> AsyncIterator[App]:
    application = App(
        queue_name(),
        redis_url=redis_url,
        settings=Settings(lost_job_age_s=AGE_S, trim_interval_s=0.01, janitor_interval_s=0.05),
    )

    @application.task(name="t", max_retries=3)
    async def t(n: int) -> int:
        return n

    async with application:
        yield application
        await assert_no_key_leak(application)


async def hash_of(app: App, job_id: str) -> tuple[dict[bytes, bytes], int]:
    redis = await app.redis()
    key = app.keys.job(job_id)
    return cast(dict[bytes, bytes], await redis.hgetall(key)), int(await redis.pttl(key))


async def pass_until_quiet(janitor: Janitor) -> None:
    """Janitor passes (the SCAN continues between them) until a whole cycle marked nothing."""
    quiet_cycle = False
    for _ in range(500):
        janitor._last_trim = 0.0  # the duty rides on the trim cadence
        before = janitor.lost
        await janitor.run_once()
        quiet_cycle = quiet_cycle and janitor.lost == before
        if janitor._lost_cursor == 0:
            if quiet_cycle:
                return
            quiet_cycle = True
    pytest.fail("the lost-job scan never finished a quiet cycle")


async def test_jobs_whose_message_is_gone_are_marked_dead_and_live_ones_are_not(
    lost_app: App,
) -> None:
    """Lost: a queued job whose entry was XDEL'd, a running one whose pending entry
    was deleted and acked, a retrying one whose delayed member was removed, a
    queued one trimmed away. Alive: queued unread, running pending, scheduled,
    retrying in the delayed set, a promoted one unread, all older than the age.
    """
    app = lost_app
    redis = await app.redis()
    t = app.tasks["t"]
    stream = app.keys.stream("default")
    jobs = {name: await t.with_options(job_id=name).enqueue(1) for name in
            ("xdel", "acked", "running", "unread", "trimmed")}  # fmt: skip
    jobs["scheduled"] = await t.with_options(job_id="scheduled").enqueue_in(3600, 1)
    jobs["retry-later"] = await t.with_options(job_id="retry-later").enqueue_in(3600, 1)
    # Due soon: the safe age counts from the due time too.
    jobs["retry-gone"] = await t.with_options(job_id="retry-gone").enqueue_in(0.05, 1)
    jobs["promoted"] = await t.with_options(job_id="promoted").enqueue_in(0.01, 1)
    for name in ("retry-later", "retry-gone"):
        await redis.hset(app.keys.job(name), "status", "retrying")
    entries = {f[b"id"].decode(): mid for mid, f in await redis.xrange(stream)}
    reply: Any = await redis.xreadgroup(GROUP, "w", {stream: ">"}, count=3)
    assert [f[b"id"] for _, f in reply[0][1]] == [b"xdel", b"acked", b"running"]
    for name in ("acked", "running"):
        await redis.hset(app.keys.job(name), mapping={"status": "running", "worker": "w"})
    await redis.xdel(stream, entries["xdel"], entries["acked"])
    await redis.xack(stream, GROUP, entries["acked"])
    await redis.xdel(stream, entries["trimmed"])  # what XTRIM does to an unread entry
    for member in await redis.zrange(app.keys.delayed, 0, -1):
        if json.loads(member)[4] == "retry-gone":
            await redis.zrem(app.keys.delayed, member)
    janitor = Janitor(app, "j")
    await anyio.sleep(0.05)
    assert await janitor.promote_due() == 1  # "promoted": in its stream, unread
    await anyio.sleep(AGE_S + 0.05)  # every job is now older than the safe age

    await pass_until_quiet(janitor)
    lost = {"xdel", "acked", "trimmed", "retry-gone"}
    for name in jobs:
        fields, ttl = await hash_of(app, name)
        if name in lost:
            assert fields[b"status"] == b"dead", name
            assert fields[b"error_type"] == b"MessageLost" and b"gone" in fields[b"error"]
            assert 0 < ttl <= app.settings.result_ttl_s * 1000
        else:
            assert fields[b"status"] != b"dead", (name, fields)
            assert ttl == -1, name
    assert janitor.lost == len(lost)
    dead = [f for _, f in await redis.xrange(app.keys.events) if f[b"kind"] == b"dead"]
    assert {f[b"job"].decode() for f in dead} == lost
    assert all(f[b"error_type"] == b"MessageLost" for f in dead)
    with pytest.raises(JobFailed, match="MessageLost"):
        await jobs["xdel"].result(timeout=1)
    assert await jobs["running"].status() == JobStatus.RUNNING
    assert await jobs["promoted"].status() == JobStatus.QUEUED

    # The live ones stay live; one more pass changes nothing.
    await pass_until_quiet(janitor)
    assert janitor.lost == len(lost)
    await redis.xack(stream, GROUP, entries["running"])
    for name in jobs:
        if name not in lost:
            await redis.delete(app.keys.job(name))


async def test_a_young_lost_job_waits_for_the_safe_age(lost_app: App) -> None:
    """The age is a margin: a job changed less than lost_job_age_s ago is left alone."""
    app = lost_app
    redis = await app.redis()
    job = await app.tasks["t"].enqueue(1)
    (entry,) = await redis.xrange(app.keys.stream("default"))
    await redis.xdel(app.keys.stream("default"), entry[0])
    janitor = Janitor(app, "j")
    started = time.monotonic()
    assert await janitor.bound_lost_jobs() == [] or time.monotonic() - started >= AGE_S
    while await job.status() != JobStatus.DEAD:
        assert time.monotonic() - started < 5, "never marked"
        await janitor.bound_lost_jobs()
        await anyio.sleep(0.02)
    assert time.monotonic() - started >= AGE_S * 0.9


async def test_lost_jobs_are_found_over_bounded_passes(lost_app: App) -> None:
    """Many job hashes: each pass examines a bounded SCAN step; all are reached."""
    app = lost_app
    redis = await app.redis()
    jobs = await app.tasks["t"].enqueue_many([(i,) for i in range(300)])
    await redis.delete(app.keys.stream("default"))  # every message gone at once
    await anyio.sleep(AGE_S + 0.05)
    janitor = Janitor(app, "j")
    passes = 0
    while janitor.lost < len(jobs):
        passes += 1
        assert passes <= 500  # SCAN walks the whole (shared) keyspace, ~1000 keys a pass
        await janitor.bound_lost_jobs()
    assert {await j.status() for j in jobs} == {JobStatus.DEAD}
