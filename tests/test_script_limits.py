"""No script fails after its first write: sizes and shapes are checked first.

A Lua script that raises after its first write is not rolled back, and
``unpack()`` fails past about 8,000 values (Lua's C stack), so an entry with
thousands of fields used to break the outcome script after its XACK (the job
acked, never in the DLQ, its hash ``running`` forever, the rest of the batch
dropped) and the promote script after its ZREM (the delayed job gone without
a trace). Each script is driven here with the largest entry enqueue accepts
and with a crafted oversize one (5,000 fields, written straight to Redis as
another program or a bug could), and a batch holding one bad entry must still
record the others.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from streamq import App, JobStatus
from streamq.dlq import DeadLetters
from streamq.janitor import Janitor
from streamq.keys import GROUP
from streamq.scripts import Outcome
from streamq.worker.reclaim import Reclaimer
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio

OVERSIZE_FIELDS = 5_000
CONSUMER = "c1"


def entry_fields(job_id: str, task: str = "t", extra: int = 0) -> dict[str, str]:
    """A valid envelope, plus ``extra`` junk fields."""
    fields = {
        "v": "1", "id": job_id, "task": task, "ct": "application/json",
        "payload": '{"args":[],"kwargs":{}}', "attempt": "1",
        "enq_ms": str(int(time.time() * 1000)),
    }  # fmt: skip
    for i in range(extra):
        fields[f"x{i}"] = "y"
    return fields


async def add_job(app: App, job_id: str, *, extra: int = 0, priority: str = "default") -> bytes:
    """XADD an entry to a priority stream and write its job hash, as enqueue would."""
    redis = await app.redis()
    stream = app.keys.stream(priority)
    if not await redis.exists(stream):
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    msg_id = cast(bytes, await redis.xadd(stream, entry_fields(job_id, extra=extra)))  # type: ignore[arg-type]
    await redis.hset(
        app.keys.job(job_id),
        mapping={"status": "queued", "task": "t", "priority": priority, "attempts": "0",
                 "enqueued_ms": str(int(time.time() * 1000)), "msg_id": msg_id},
    )  # fmt: skip
    return msg_id


async def read(app: App, count: int = 100, priority: str = "default") -> list[bytes]:
    """Deliver new messages to CONSUMER; their ids."""
    redis = await app.redis()
    reply = await redis.xreadgroup(GROUP, CONSUMER, {app.keys.stream(priority): ">"}, count=count)
    return [msg_id for _, entries in reply or [] for msg_id, _ in entries]


def outcome(app: App, msg_id: bytes, job_id: str, status: str, delay_ms: int = 0) -> Outcome:
    return Outcome(
        stream=app.keys.stream("default"), job_key=app.keys.job(job_id), msg_id=msg_id,
        deliveries=1, job_id=job_id, task="t", attempt=1, status=status,
        result_or_error_type=b'"ok"' if status == "succeeded" else "ValueError",
        error="" if status == "succeeded" else "boom", traceback="", duration_ms=1,
        retry_delay_ms=delay_ms, priority="default",
    )  # fmt: skip


async def complete(app: App, outcomes: list[Outcome]) -> list[int]:
    scripts = await app.scripts()
    return await scripts.complete(
        app.keys.events, outcomes, delayed=app.keys.delayed, dlq=app.keys.dlq, group=GROUP,
        consumer=CONSUMER, now_ms=int(time.time() * 1000), result_ttl_ms=60_000,
    )  # fmt: skip


async def dlq_by_job(app: App) -> dict[str, dict[bytes, bytes]]:
    redis = await app.redis()
    return {
        fields.get(b"id", b"").decode(): fields for _, fields in await redis.xrange(app.keys.dlq)
    }


async def status_and_ttl(redis: Redis, app: App, job_id: str) -> tuple[bytes | None, int]:
    key = app.keys.job(job_id)
    return await redis.hget(key, "status"), int(await redis.pttl(key))


async def pel_size(app: App) -> int:
    redis = await app.redis()
    return int((await redis.xpending(app.keys.stream("default"), GROUP))["pending"])


async def test_complete_records_a_batch_holding_oversize_entries(app: App) -> None:
    """A failed and a retried job whose entries have 5,000 fields go to the DLQ;
    the succeeded and retried jobs of the same batch are all recorded.

    The oversize entries cannot be copied field by field (unpack), so only
    the envelope's standard fields travel to the DLQ, with a reason saying so;
    the job hash becomes final with a TTL. Before, the script raised after
    its first XACK: the batch's other outcomes were dropped and the first job
    was acked but stayed ``running`` without a TTL, in no DLQ.
    """
    redis = await app.redis()
    ids = {
        "big-failed": await add_job(app, "big-failed", extra=OVERSIZE_FIELDS - 7),
        "ok": await add_job(app, "ok"),
        "retry-now": await add_job(app, "retry-now"),
        "big-retry": await add_job(app, "big-retry", extra=OVERSIZE_FIELDS - 7),
        "retry-later": await add_job(app, "retry-later"),
    }
    assert len(await read(app)) == 5
    replies = await complete(
        app,
        [
            outcome(app, ids["big-failed"], "big-failed", "failed"),
            outcome(app, ids["ok"], "ok", "succeeded"),
            outcome(app, ids["retry-now"], "retry-now", "retry"),
            outcome(app, ids["big-retry"], "big-retry", "retry", delay_ms=60_000),
            outcome(app, ids["retry-later"], "retry-later", "retry", delay_ms=60_000),
        ],
    )
    assert replies == [1, 1, 1, 1, 1]
    assert await pel_size(app) == 0
    dead = await dlq_by_job(app)
    assert set(dead) == {"big-failed", "big-retry"}
    for job_id in ("big-failed", "big-retry"):
        fields = dead[job_id]
        assert b"too many fields" in fields[b"dlq_reason"], fields[b"dlq_reason"]
        assert fields[b"task"] == b"t" and fields[b"payload"] == b'{"args":[],"kwargs":{}}'
        assert b"x0" not in fields and len(fields) < 40
        status, ttl = await status_and_ttl(redis, app, job_id)
        assert status == b"failed" and ttl > 0
        assert (await redis.hget(app.keys.job(job_id), "dlq_id")) is not None
    assert (await status_and_ttl(redis, app, "ok"))[0] == b"succeeded"
    assert (await status_and_ttl(redis, app, "retry-now"))[0] == b"retrying"
    assert (await status_and_ttl(redis, app, "retry-later"))[0] == b"retrying"
    delayed = [json.loads(m) for m in await redis.zrange(app.keys.delayed, 0, -1)]
    assert [m[m.index("id") + 1] for m in delayed] == ["retry-later"]
    assert await redis.xlen(app.keys.stream("default")) == 6  # retry-now went back
    kinds = [f[b"kind"] for _, f in await redis.xrange(app.keys.events)]
    assert kinds.count(b"failed") == 2 and kinds.count(b"retried") == 2
    await redis.delete(app.keys.delayed, app.keys.job("retry-now"), app.keys.job("retry-later"))


async def test_promote_sends_oversize_and_corrupt_members_to_the_dlq(app: App) -> None:
    """Due delayed members that cannot become an entry go to the DLQ with an event.

    A member with 5,000 fields and one that is not JSON sit in the delayed set
    between two good ones. One promote pass moves the good ones to their
    stream and the bad ones to the DLQ (with a reason and a ``dead`` event);
    none just vanishes, and the delayed set is empty. Before, the ZREM of the
    oversize member happened before its failing unpack: it was gone, with no
    event, and the rest of the batch stayed behind.
    """
    redis = await app.redis()
    due = int(time.time() * 1000) - 1000

    def member(job_id: str, extra: int = 0) -> str:
        flat: list[str] = ["default"]
        for k, v in entry_fields(job_id, extra=extra).items():
            flat += [k, v]
        return json.dumps(flat)

    await redis.zadd(
        app.keys.delayed,
        {
            member("first"): due,
            member("huge", OVERSIZE_FIELDS - 7): due + 1,
            "not json at all": due + 2,
            json.dumps(["default", "odd"]): due + 3,
            member("last"): due + 4,
        },
    )
    for job_id in ("first", "huge", "last"):
        await redis.hset(
            app.keys.job(job_id),
            mapping={"status": "scheduled", "msg_id": "delayed", "due_ms": due, "task": "t"},
        )
    promoted = await Janitor(app, "j").promote_due()
    assert await redis.zcard(app.keys.delayed) == 0
    assert promoted == 2
    stream = [f[b"id"] for _, f in await redis.xrange(app.keys.stream("default"))]
    assert stream == [b"first", b"last"]
    dead = [f for _, f in await redis.xrange(app.keys.dlq)]
    assert len(dead) == 3
    reasons = [f[b"dlq_reason"] for f in dead]
    assert b"too many fields" in reasons[0] and dead[0][b"id"] == b"huge"
    assert dead[0][b"payload"] == b'{"args":[],"kwargs":{}}' and b"x0" not in dead[0]
    assert all(b"delayed" in r for r in reasons[1:])
    dead_events = [f for _, f in await redis.xrange(app.keys.events) if f[b"kind"] == b"dead"]
    assert len(dead_events) == 3
    status, ttl = await status_and_ttl(redis, app, "huge")
    assert status == b"dead" and ttl > 0
    await redis.delete(app.keys.job("first"), app.keys.job("last"))


async def test_dead_keeps_the_envelope_of_an_oversize_entry(app: App) -> None:
    """A poison message with 5,000 fields reaches the DLQ with its standard fields."""
    redis = await app.redis()
    msg_id = await add_job(app, "huge", extra=OVERSIZE_FIELDS - 7)
    await read(app)
    scripts = await app.scripts()
    dlq_id = await scripts.dead(
        stream=app.keys.stream("default"), dlq=app.keys.dlq, events=app.keys.events,
        job_key=app.keys.job("huge"), group=GROUP, consumer=CONSUMER, msg_id=msg_id,
        deliveries=1, reason="poison", now_ms=int(time.time() * 1000),
        result_ttl_ms=60_000, job_id="huge",
        task="t",
    )  # fmt: skip
    assert dlq_id is not None
    fields = (await dlq_by_job(app))["huge"]
    assert fields[b"dlq_reason"].startswith(b"poison") and fields[b"task"] == b"t"
    assert b"too many fields" in fields[b"dlq_note"]
    assert await pel_size(app) == 0
    assert (await status_and_ttl(redis, app, "huge"))[0] == b"dead"


async def test_requeue_refuses_an_oversize_dlq_entry_without_writing(app: App) -> None:
    """A crafted DLQ entry too large to copy is refused before any write."""
    redis = await app.redis()
    fields: dict[str, str] = entry_fields("huge", extra=OVERSIZE_FIELDS - 7)
    fields["dlq_reason"] = "crafted"
    entry_id = (await redis.xadd(app.keys.dlq, fields)).decode()  # type: ignore[arg-type]
    with pytest.raises(Exception, match="too many fields"):
        await DeadLetters(app).requeue(entry_id)
    assert await redis.xlen(app.keys.dlq) == 1
    assert not await redis.exists(app.keys.stream("default"))
    assert not await redis.exists(app.keys.job("huge"))


async def test_reclaim_hands_over_an_oversize_entry(app: App) -> None:
    """Reclaim reads an oversize entry's fields without unpacking them."""
    await app.redis()
    msg_id = await add_job(app, "huge", extra=OVERSIZE_FIELDS - 7)
    await read(app)
    scripts = await app.scripts()
    redis = await app.redis()
    await redis.xclaim(
        app.keys.stream("default"), GROUP, CONSUMER, 0, [msg_id], idle=60_000, justid=True
    )
    got = await Reclaimer(scripts, app.keys, app.settings, "c2", 1000, {}).reclaim("default", 10)
    assert [(m, len(f), d) for m, f, d, _ in got] == [(msg_id, OVERSIZE_FIELDS, 2)]
    await redis.xack(app.keys.stream("default"), GROUP, msg_id)
    await redis.delete(app.keys.job("huge"))


async def test_the_largest_accepted_entry_goes_through_every_script(app: App) -> None:
    """A payload of max_payload_bytes, with per-call options, through its whole life.

    Enqueued now and later, promoted, started, retried at once and after a
    delay, failed to the DLQ, requeued, reclaimed and dead-lettered: every
    script handles the biggest entry enqueue lets in.
    """
    redis = await app.redis()

    @app.task(name="big", max_retries=5)
    async def big(s: str) -> None: ...

    overhead = len(app.serializer.dumps({"args": [""], "kwargs": {}}))
    text = "x" * (app.settings.max_payload_bytes - overhead)
    heavy = big.with_options(max_retries=7, timeout=12.5)
    job = await heavy.enqueue(text)
    later = await heavy.enqueue_in(0.01, text)
    stream = app.keys.stream("default")
    scripts = await app.scripts()

    async def deliver() -> tuple[bytes, dict[bytes, bytes]]:
        reply: Any = await redis.xreadgroup(GROUP, CONSUMER, {stream: ">"}, count=1)
        msg_id, fields = reply[0][1][0]
        return msg_id, fields

    def outcome_of(msg_id: bytes, job_id: str, status: str, delay_ms: int = 0) -> Outcome:
        o = outcome(app, msg_id, job_id, status, delay_ms)
        o.task = "big"
        return o

    msg_id, fields = await deliver()
    assert len(fields[b"payload"]) == app.settings.max_payload_bytes
    assert await complete(app, [outcome_of(msg_id, job.id, "retry")]) == [1]
    msg_id, fields = await deliver()
    assert fields[b"id"] == job.id.encode() and fields[b"attempt"] == b"2"
    assert await complete(app, [outcome_of(msg_id, job.id, "retry", delay_ms=1)]) == [1]
    janitor = Janitor(app, "j")

    async def promoted_both() -> bool:
        await janitor.promote_due()
        return await redis.zcard(app.keys.delayed) == 0

    await wait_until(promoted_both, 5, "both delayed entries promoted")
    got = {}
    for _ in range(2):
        msg_id, fields = await deliver()
        got[fields[b"id"].decode()] = (msg_id, fields)
    assert set(got) == {job.id, later.id}
    msg_id, fields = got[job.id]
    assert len(fields[b"payload"]) == app.settings.max_payload_bytes
    assert fields[b"max_retries"] == b"7" and fields[b"timeout"] == b"12.5"
    assert await complete(app, [outcome_of(msg_id, job.id, "failed")]) == [1]
    (letter,) = await DeadLetters(app).entries()
    assert len(letter.fields["payload"]) == app.settings.max_payload_bytes
    assert await DeadLetters(app).requeue(letter.id) == job.id
    msg_id, fields = await deliver()
    await redis.xclaim(stream, GROUP, CONSUMER, 0, [msg_id], idle=60_000, justid=True)
    reclaimer = Reclaimer(scripts, app.keys, app.settings, "c2", 1000, {})
    claimed = await reclaimer.reclaim("default", 10)
    assert [(m, len(f[b"payload"])) for m, f, _, _ in claimed] == [
        (msg_id, app.settings.max_payload_bytes)
    ]
    dlq_id = await scripts.dead(
        stream=stream, dlq=app.keys.dlq, events=app.keys.events, job_key=app.keys.job(job.id),
        group=GROUP, consumer="c2", msg_id=msg_id, deliveries=2, reason="poison",
        now_ms=int(time.time() * 1000), result_ttl_ms=60_000,
        job_id=job.id, task="big",
    )  # fmt: skip
    assert dlq_id is not None
    (letter,) = await DeadLetters(app).entries()
    assert len(letter.fields["payload"]) == app.settings.max_payload_bytes
    assert await job.status() == JobStatus.DEAD
    msg_id, _ = got[later.id]
    assert await complete(app, [outcome_of(msg_id, later.id, "succeeded")]) == [1]


async def test_complete_records_a_batch_whose_middle_job_key_is_not_a_hash(app: App) -> None:
    """A job key of the wrong type (a string someone SET) fails no batch half way.

    Its message is still acked and its failure dead-lettered; only its hash,
    which is not one, is left as it was (no write, no TTL). Before, the HSET
    raised WRONGTYPE after the first job's XACK: the rest of the batch was lost.
    """
    redis = await app.redis()
    ids = {name: await add_job(app, name) for name in ("one", "two", "three")}
    await redis.delete(app.keys.job("two"))
    await redis.set(app.keys.job("two"), "someone else's")
    assert len(await read(app)) == 3
    replies = await complete(
        app,
        [
            outcome(app, ids["one"], "one", "succeeded"),
            outcome(app, ids["two"], "two", "failed"),
            outcome(app, ids["three"], "three", "succeeded"),
        ],
    )
    assert replies == [1, 1, 1]
    assert await pel_size(app) == 0
    assert await redis.get(app.keys.job("two")) == b"someone else's"
    assert await redis.pttl(app.keys.job("two")) == -1
    assert set(await dlq_by_job(app)) == {"two"}
    for name in ("one", "three"):
        assert (await status_and_ttl(redis, app, name))[0] == b"succeeded"
    await redis.delete(app.keys.job("two"))


async def test_complete_with_a_wrong_type_shared_key_writes_nothing(app: App) -> None:
    """The events stream SET as a string: refused with WRONGTYPE before any write."""
    redis = await app.redis()
    msg_id = await add_job(app, "one")
    await read(app)
    await redis.set(app.keys.events, "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await complete(app, [outcome(app, msg_id, "one", "succeeded")])
    assert await pel_size(app) == 1
    assert (await status_and_ttl(redis, app, "one"))[0] == b"queued"
    await redis.delete(app.keys.events)
    assert await complete(app, [outcome(app, msg_id, "one", "succeeded")]) == [1]


async def test_promote_leaves_a_job_key_of_the_wrong_type_alone(app: App) -> None:
    redis = await app.redis()

    @app.task(name="t")
    async def t() -> None: ...

    jobs = [await t.with_options(job_id=name).enqueue_in(0.01) for name in ("a", "b")]
    await redis.delete(app.keys.job("a"))
    await redis.set(app.keys.job("a"), "not a hash")
    await wait_until(lambda: _due(app), 5, "both due")
    assert await Janitor(app, "j").promote_due() == 2
    assert await redis.get(app.keys.job("a")) == b"not a hash"
    assert await jobs[1].status() == JobStatus.QUEUED
    await redis.delete(app.keys.job("a"))


async def _due(app: App) -> bool:
    redis = await app.redis()
    seconds, micros = await redis.time()
    return bool(await redis.zcount(app.keys.delayed, "-inf", seconds * 1000 + micros // 1000) == 2)
