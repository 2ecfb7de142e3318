"""One job's story in time proportional to the job: the event index in its hash.

Every script that writes an event for a job also records that event's entry
id in the job's hash, as the field ``ev:<entry id>`` with the event's kind as
its value, in the same script; an event that accompanies a new stream message
names it (``msg``), one that accompanies a DLQ entry names that (``dlq``). A
reader of a job's story (``Replay.story``) then fetches exactly those entries
(XRANGE id id), whatever the size of the history around them. ``Job.info()``
keeps showing the job's own fields; ``Job.event_ids()`` returns the index.

Without the index, every kind below fails its check: the hash holds no
``ev:`` field, and the enqueued, retried and requeued events name no message.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import cast

import anyio
import pytest

from streamq import App, DeadLetters, JobFailed, JobStatus, Retry, Settings
from streamq.janitor import Janitor
from streamq.keys import GROUP
from streamq.scripts import Outcome, Started
from streamq.worker import MAX_BOUNCES
from streamq.worker.fetch import Fetcher
from streamq.worker.outcome import LOST, OutcomeWriter, move_to_dlq
from tests.conftest import (
    assert_no_key_leak,
    bound_lost_jobs,
    drop_queue,
    queue_name,
    running_worker,
    wait_until,
)

pytestmark = pytest.mark.anyio

FAST = Settings(visibility_timeout_s=0.3, janitor_interval_s=0.05, max_deliveries=10)
STREAM_ID = re.compile(rb"^\d+-\d+$")


@pytest.fixture
async def fast(redis_url: str) -> AsyncIterator[App]:
    application = App(queue_name(), redis_url=redis_url, settings=FAST)
    async with application:
        yield application
        await assert_no_key_leak(application)


def order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq)


async def raw_hash(app: App, job_id: str) -> dict[bytes, bytes]:
    redis = await app.redis()
    return cast(dict[bytes, bytes], await redis.hgetall(app.keys.job(job_id)))


async def story(app: App, job_id: str, deleted: frozenset[bytes] = frozenset()) -> list[str]:
    """The kinds the job's index names, in order, after checking every reference.

    Each ``ev:`` id is an event of this job with that kind; each ``msg`` that
    names a stream id resolves (in some priority stream) to this job's message
    (unless the test ``deleted`` it), each ``dlq`` to this job's DLQ entry
    (unless a later requeue took it out); and the index is complete: every
    event of this job in the events stream is in it.
    """
    redis = await app.redis()
    requeued_from = {
        e[b"from_dlq"] for _, e in await redis.xrange(app.keys.events)
        if e[b"kind"] == b"requeued" and e.get(b"job") == job_id.encode()
    }  # fmt: skip
    index = {
        field[3:]: kind for field, kind in (await raw_hash(app, job_id)).items()
        if field.startswith(b"ev:")
    }  # fmt: skip
    kinds = []
    for event_id in sorted(index, key=order):
        found = await redis.xrange(app.keys.events, event_id, event_id)
        assert found, f"indexed event {event_id!r} is not in the events stream"
        (_, event), *_ = found
        assert event[b"kind"] == index[event_id], (event_id, event)
        assert event[b"job"] == job_id.encode(), (event_id, event)
        msg = event.get(b"msg", b"")
        if STREAM_ID.match(msg) and msg not in deleted:
            owners = []
            for stream in app.streams:
                for _, fields in await redis.xrange(stream, msg, msg):
                    owners.append(fields.get(b"id"))
            assert owners == [job_id.encode()], (event, owners)
        if b"dlq" in event:
            letters = await redis.xrange(app.keys.dlq, event[b"dlq"], event[b"dlq"])
            if event[b"dlq"] in requeued_from:
                assert letters == [], "a requeued DLQ entry is removed"
            else:
                ((_, letter),) = letters
                # The entry's copy of the message, or (a member that could not
                # become one) the raw delayed member.
                assert letter.get(b"id") == job_id.encode() or (
                    job_id.encode() in letter[b"dlq_raw"]
                ), (event, letter)
        kinds.append(event[b"kind"].decode())
    everything = [
        entry_id for entry_id, e in await redis.xrange(app.keys.events)
        if e.get(b"job") == job_id.encode()
    ]  # fmt: skip
    assert sorted(index, key=order) == everything, "an event of this job is not indexed"
    return kinds


async def event_of(app: App, job_id: str, kind: str) -> dict[bytes, bytes]:
    redis = await app.redis()
    for _, event in await redis.xrange(app.keys.events):
        if event.get(b"job") == job_id.encode() and event[b"kind"] == kind.encode():
            return cast(dict[bytes, bytes], event)
    raise AssertionError(f"no {kind} event for {job_id}")


async def test_a_job_that_succeeds_indexes_enqueued_started_progress_succeeded(
    app: App,
) -> None:
    import streamq

    @app.task(name="t")
    async def t() -> str:
        await streamq.progress(50, "half")
        return "ok"

    job = await t.enqueue()
    async with running_worker(app):
        assert await job.result(timeout=10) == "ok"
    assert await story(app, job.id) == ["enqueued", "started", "progress", "succeeded"]
    enqueued = await event_of(app, job.id, "enqueued")
    assert enqueued[b"msg"] == (await job.info())["msg_id"].encode()


async def test_scheduled_promoted_and_retried_through_the_delayed_set(fast: App) -> None:
    attempts = 0

    # A fixed interval, not jittered backoff: full jitter may pick under 1 ms,
    # and a 0 ms retry goes straight back to its stream (no 'promoted').
    @fast.task(name="t", max_retries=3, retry=Retry(intervals=[0.02]))
    async def t() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("once")
        return "ok"

    job = await t.enqueue_in(0.05)
    async with running_worker(fast):
        assert await job.result(timeout=10) == "ok"
    assert await story(fast, job.id) == [
        "scheduled", "promoted", "started", "retried", "promoted", "started", "succeeded",
    ]  # fmt: skip


async def test_a_retry_without_delay_names_its_new_message(app: App) -> None:
    attempts = 0

    @app.task(name="t", max_retries=3)
    async def t() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise Retry(delay=0)
        return "ok"

    job = await t.enqueue()
    async with running_worker(app):
        assert await job.result(timeout=10) == "ok"
    assert await story(app, job.id) == [
        "enqueued", "started", "retried", "started", "succeeded",
    ]  # fmt: skip
    retried = await event_of(app, job.id, "retried")
    redis = await app.redis()
    (entry_id, _), *_ = await redis.xrevrange(app.keys.stream("default"), count=1)
    assert retried[b"msg"] == entry_id


async def test_failed_then_requeued_keeps_one_index_across_both_runs(app: App) -> None:
    fixed = False

    @app.task(name="t", max_retries=0)
    async def t() -> str:
        if not fixed:
            raise ValueError("not yet")
        return "fixed"

    job = await t.enqueue()
    dlq = DeadLetters(app)
    async with running_worker(app):
        with pytest.raises(JobFailed):
            await job.result(timeout=10)
        (letter,) = await dlq.entries()
        assert (await event_of(app, job.id, "failed"))[b"dlq"] == letter.id.encode()
        fixed = True
        await dlq.requeue(letter.id)
        assert await job.result(timeout=10) == "fixed"
    assert await story(app, job.id) == [
        "enqueued", "started", "failed", "requeued", "started", "succeeded",
    ]  # fmt: skip


async def test_a_poison_message_dead_lettered_names_its_dlq_entry(app: App) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, "w", 100)
    (message,) = await fetcher.fetch(1)
    scripts = await app.scripts()
    assert await move_to_dlq(
        scripts, app.keys, app.settings, "w", message, "too many deliveries", job.id, "t",
        error_type="TooManyDeliveries",
    )  # fmt: skip
    assert await job.status() == JobStatus.DEAD
    assert await story(app, job.id) == ["enqueued", "dead"]
    assert b"dlq" in await event_of(app, job.id, "dead")


async def test_a_stale_workers_dropped_outcome_is_indexed_without_touching_ttl(
    app: App,
) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, "a", 100)
    (message,) = await fetcher.fetch(1)
    redis = await app.redis()
    await redis.xclaim(message.stream, GROUP, "b", 0, [message.msg_id])
    scripts = await app.scripts()
    stale = Outcome(
        stream=message.stream, job_key=app.keys.job(job.id), msg_id=message.msg_id,
        deliveries=1, job_id=job.id, task="t", attempt=1, status="succeeded",
        result_or_error_type=b"1", error="", traceback="", duration_ms=1,
    )  # fmt: skip
    assert await scripts.complete(
        app.keys.events, [stale], delayed=app.keys.delayed, dlq=app.keys.dlq, group=GROUP,
        consumer="a", now_ms=0, result_ttl_ms=60_000,
    ) == [LOST]  # fmt: skip
    assert await story(app, job.id) == ["enqueued", "lost-ownership"]
    assert await redis.pttl(app.keys.job(job.id)) == -1  # still queued: no TTL given
    # A stale outcome for a job whose hash is gone creates no hash.
    await redis.delete(app.keys.job(job.id))
    assert await scripts.complete(
        app.keys.events, [stale], delayed=app.keys.delayed, dlq=app.keys.dlq, group=GROUP,
        consumer="a", now_ms=0, result_ttl_ms=60_000,
    ) == [LOST]  # fmt: skip
    assert not await redis.exists(app.keys.job(job.id))
    await redis.xack(message.stream, GROUP, message.msg_id)


async def test_a_reclaimed_job_indexes_its_reclaim(fast: App) -> None:
    @fast.task(name="t")
    async def t() -> str:
        return "ok"

    job = await t.enqueue()
    redis = await fast.redis()
    stream = fast.keys.stream("default")
    await redis.xreadgroup(GROUP, "crashed", {stream: ">"}, count=1)
    async with running_worker(fast):
        assert await job.result(timeout=10) == "ok"
    assert await story(fast, job.id) == ["enqueued", "reclaimed", "started", "succeeded"]


async def test_the_janitor_marking_a_lost_job_dead_is_indexed(app: App) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    redis = await app.redis()
    msg_id = (await job.info())["msg_id"].encode()
    await redis.xdel(app.keys.stream("default"), msg_id)
    assert await bound_lost_jobs(app) == [job.id]
    assert await story(app, job.id, deleted=frozenset({msg_id})) == ["enqueued", "dead"]
    assert (await event_of(app, job.id, "dead"))[b"error_type"] == b"MessageLost"


async def test_a_corrupt_delayed_member_dead_lettered_at_promotion_is_indexed(
    app: App,
) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue_in(0.01)
    redis = await app.redis()
    (member, due), *_ = await redis.zrange(app.keys.delayed, 0, -1, withscores=True)
    entry = json.loads(member)
    entry[entry.index("attempt") + 1] = 1  # not a string: cannot become an entry
    await redis.zrem(app.keys.delayed, member)
    await redis.zadd(app.keys.delayed, {json.dumps(entry): due})
    await anyio.sleep(0.02)
    assert await Janitor(app, "j").promote_due() == 0
    assert await job.status() == JobStatus.DEAD
    assert await story(app, job.id) == ["scheduled", "dead"]
    assert b"dlq" in await event_of(app, job.id, "dead")


async def test_a_job_handed_back_twelve_times_stays_a_small_hash(redis_url: str) -> None:
    """Each hand-back adds a bounced and a promoted event: with the enqueue and the
    final dead event, 26 index fields: at most 100 B each of the hash's memory
    (about 940 B in all on Valkey 9.1, a hash of about 1 KiB without them; about
    2.1 KiB on Redis 7.0, whose hash table entries are bigger)."""
    name = queue_name()
    producer = App(name, redis_url=redis_url, settings=FAST)
    stranger = App(name, redis_url=redis_url, settings=FAST)

    @producer.task(name="elsewhere")
    async def elsewhere() -> None: ...

    @stranger.task(name="other")
    async def other() -> None: ...

    async with producer, stranger:
        job = await elsewhere.enqueue()
        async with running_worker(stranger):

            async def dead() -> bool:
                return await job.status() == JobStatus.DEAD

            await wait_until(dead, timeout=60, description="the job dead-lettered")
        kinds = await story(producer, job.id)
        # (A worker slowed past the 0.3 s visibility timeout adds a reclaim.)
        handed_back = [k for k in kinds if k != "reclaimed"]
        assert handed_back == ["enqueued", *["bounced", "promoted"] * MAX_BOUNCES, "dead"]
        redis = await producer.redis()
        key = producer.keys.job(job.id)
        with_index = int(await redis.memory_usage(key))
        await redis.hdel(key, *[f"ev:{entry_id}" for entry_id, _ in await job.event_ids()])
        without = int(await redis.memory_usage(key))
        assert with_index - without < len(kinds) * 100
        await drop_queue(producer)


async def test_info_hides_the_index_and_event_ids_returns_it(app: App) -> None:
    @app.task(name="t")
    async def t() -> int:
        return 1

    job = await t.enqueue()
    async with running_worker(app):
        assert await job.result(timeout=10) == 1
    info = await job.info()
    assert not [k for k in info if k.startswith("ev:")]
    ids = await job.event_ids()
    assert [kind for _, kind in ids] == ["enqueued", "started", "succeeded"]
    raw = await raw_hash(app, job.id)
    assert {f"ev:{entry_id}".encode() for entry_id, _ in ids} == {
        k for k in raw if k.startswith(b"ev:")
    }
    assert await app.job("never-enqueued").event_ids() == []


async def test_the_drain_path_records_outcomes_as_before(app: App) -> None:
    """Start marks and outcomes through the OutcomeWriter (one round trip): the job
    hashes hold the same fields as before the index, plus one ``ev:`` field per
    event; the events carry the same fields, plus ``msg``/``dlq`` references."""

    @app.task(name="t")
    async def t() -> None: ...

    jobs = await t.enqueue_many([()] * 3)
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, "w", 100)
    messages = await fetcher.fetch(3)
    recorded: list[bool] = []
    writer = OutcomeWriter(
        await app.scripts(), app.keys, app.settings, "w", list,
        on_recorded=lambda _outcome, ok: recorded.append(ok),
    )  # fmt: skip
    statuses = ["succeeded", "retry", "failed"]
    for message, job, status in zip(messages, jobs, statuses, strict=True):
        writer.start(
            [Started(message.stream, message.msg_id, app.keys.job(job.id), job.id, "t", 1,
                     "default", message.deliveries)]
        )  # fmt: skip
        writer.put(
            Outcome(
                stream=message.stream, job_key=app.keys.job(job.id), msg_id=message.msg_id,
                deliveries=message.deliveries, job_id=job.id, task="t", attempt=1,
                status=status, result_or_error_type=b"42" if status == "succeeded" else
                "ValueError", error="" if status == "succeeded" else "boom",
                traceback="tb", duration_ms=3, retry_delay_ms=60_000, priority="default",
            )
        )  # fmt: skip
    writer.close()
    await writer.run()
    assert recorded == [True] * 3
    common = {"task", "priority", "attempts", "enqueued_ms", "msg_id", "started_ms", "worker"}
    expected = {
        "succeeded": common | {"status", "result", "finished_ms", "duration_ms", "outcome_msg"},
        "retry": common | {"status", "error_type", "error", "traceback", "due_ms", "outcome_msg"},
        "failed": common | {"status", "error_type", "error", "traceback", "finished_ms",
                            "duration_ms", "outcome_msg", "dlq_id"},
    }  # fmt: skip
    final = {"succeeded": "succeeded", "retry": "retried", "failed": "failed"}
    for job, status in zip(jobs, statuses, strict=True):
        info = await job.info()
        assert set(info) == expected[status], (status, info)
        assert await story(app, job.id) == ["enqueued", "started", final[status]]
        event = await event_of(app, job.id, final[status])
        base = {b"kind", b"job", b"task", b"attempt", b"deliveries", b"worker", b"duration_ms",
                b"ts"}  # fmt: skip
        extra: dict[str, set[bytes]] = {
            "succeeded": set(), "retry": {b"error_type", b"delay_ms"},
            "failed": {b"error_type", b"dlq_id", b"dlq"},
        }  # fmt: skip
        assert set(event) == base | extra[status], (status, event)
    assert [(await j.info())["status"] for j in jobs] == ["succeeded", "retrying", "failed"]
    redis = await app.redis()
    await redis.delete(app.keys.job(jobs[1].id))  # its retry waits an hour in the delayed set
    await redis.delete(app.keys.delayed)
