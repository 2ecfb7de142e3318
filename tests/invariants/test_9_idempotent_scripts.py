"""Invariant 9: every enqueue and outcome script can run twice; the second run changes nothing.

redis-py retries a command after a timeout or a dropped connection, so a
script whose reply was lost runs again. Each test runs one script call
twice, through its typed wrapper, and compares a snapshot of every key of
the queue (stream entries, consumer group, PEL owners and delivery counts,
hashes, the delayed set, TTL presence) after the first and the second run.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from streamq import App
from streamq.keys import GROUP
from streamq.scripts import Outcome, Scripts
from streamq.worker.fetch import Fetcher, Message
from streamq.worker.outcome import ALREADY_RECORDED, RECORDED

pytestmark = pytest.mark.anyio

ADDED, EXISTED = 1, 0
"""enqueue.lua's reply codes."""


async def snapshot(app: App) -> dict[bytes, Any]:
    """Everything a script could have changed in the queue's keys (not idle times)."""
    redis: Redis = await app.redis()
    state: dict[bytes, Any] = {}
    async for key in redis.scan_iter(match=app.keys.pattern(), count=1000):
        kind = (await redis.type(key)).decode()
        has_ttl = await redis.pttl(key) > 0
        value: Any
        if kind == "stream":
            groups = [
                (g["name"], g["pending"], g["last-delivered-id"])
                for g in await redis.xinfo_groups(key)
            ]
            pel = [
                (p["message_id"], p["consumer"], p["times_delivered"])
                for p in await redis.xpending_range(key, GROUP, "-", "+", 1000)
            ] if groups else []  # fmt: skip
            value = (await redis.xrange(key), groups, pel)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        else:
            value = await redis.get(key)
        state[key] = (kind, has_ttl, value)
    return state


async def enqueue_call(app: App, job_id: str, due_ms: int = 0) -> tuple[list[str], list[Any]]:
    return Scripts.enqueue_call(
        stream=app.keys.stream("default"), events=app.keys.events, group=GROUP, task="t",
        content_type="json", jobs=[(job_id, app.keys.job(job_id), b'{"args":[],"kwargs":{}}')],
        now_ms=int(time.time() * 1000), priority="default",
        delayed=app.keys.delayed, due_ms=due_ms,
    )  # fmt: skip


async def enqueue_and_fetch(app: App, job_id: str) -> Message:
    scripts = await app.scripts()
    await scripts.enqueue(await enqueue_call(app, job_id))
    fetcher = Fetcher(await app.redis(), scripts, app.keys, app.settings, "w", 100)
    await fetcher.ensure_groups()
    (message,) = await fetcher.fetch(1)
    return message


@pytest.mark.parametrize("due", ["now", "later"])
async def test_enqueue_twice_adds_one_job(app: App, due: str) -> None:
    """Invariant 9: a repeated enqueue of one job id adds no second entry or event.

    The second run answers (0, the first run's id). Without the job-hash
    check in enqueue.lua it would XADD a second entry (or a second delayed
    member, whose JSON differs by nothing but would still be a second run
    once enqueue_ms differs) and the job would run twice.
    """
    scripts = await app.scripts()
    call = await enqueue_call(app, "j1", 0 if due == "now" else int(time.time() * 1000) + 60_000)
    ((code, msg_id),) = await scripts.enqueue(call)
    assert code == ADDED
    first = await snapshot(app)
    assert await scripts.enqueue(call) == [(EXISTED, msg_id)]
    # A retry from a client whose clock moved on carries a later enq_ms: still one job.
    later = await enqueue_call(app, "j1", 0 if due == "now" else int(time.time() * 1000) + 90_000)
    assert await scripts.enqueue(later) == [(EXISTED, msg_id)]
    assert await snapshot(app) == first
    redis = await app.redis()
    in_stream = await redis.xlen(app.keys.stream("default")) if due == "now" else 0
    assert in_stream + await redis.zcard(app.keys.delayed) == 1


@pytest.mark.parametrize(
    ("status", "delay_ms"),
    [("succeeded", 0), ("failed", 0), ("retry", 0), ("retry", 60_000)],
    ids=["succeeded", "failed", "retry-now", "retry-later"],
)
async def test_complete_twice_records_one_outcome(app: App, status: str, delay_ms: int) -> None:
    """Invariant 9: a repeated outcome script answers "already recorded" and writes nothing.

    For each outcome kind: no second event, no second retry entry (stream
    or delayed set), no second DLQ entry, the job hash unchanged. Without the
    ``outcome_msg`` check the second run would find the message acked, and
    either report it lost (the worker would log a false warning) or, worse,
    record the retry or DLQ entry again.
    """
    message = await enqueue_and_fetch(app, "j1")
    scripts = await app.scripts()
    outcome = Outcome(
        stream=message.stream, job_key=app.keys.job("j1"), msg_id=message.msg_id,
        deliveries=message.deliveries, job_id="j1", task="t", attempt=1, status=status,
        result_or_error_type=b"42" if status == "succeeded" else "ValueError",
        error="" if status == "succeeded" else "boom", traceback="", duration_ms=1,
        retry_delay_ms=delay_ms, priority="default",
    )  # fmt: skip

    async def complete() -> list[int]:
        return await scripts.complete(
            app.keys.events, [outcome], delayed=app.keys.delayed, dlq=app.keys.dlq,
            group=GROUP, consumer="w", now_ms=int(time.time() * 1000), result_ttl_ms=60_000,
        )  # fmt: skip

    assert await complete() == [RECORDED]
    first = await snapshot(app)
    assert await complete() == [ALREADY_RECORDED]
    assert await snapshot(app) == first


async def test_dead_twice_adds_one_dlq_entry(app: App) -> None:
    """Invariant 9: a repeated dead-letter finds the message acked and adds nothing.

    The second run answers None (not ours any more). Without the fencing
    check in dead.lua it would append the message to the DLQ a second time
    (and a requeue would then run the job twice).
    """
    message = await enqueue_and_fetch(app, "j1")
    scripts = await app.scripts()

    async def dead() -> bytes | None:
        return await scripts.dead(
            stream=message.stream, dlq=app.keys.dlq, events=app.keys.events,
            job_key=app.keys.job("j1"), group=GROUP, consumer="w", msg_id=message.msg_id,
            deliveries=message.deliveries, reason="poison", now_ms=int(time.time() * 1000),
            result_ttl_ms=60_000, job_id="j1", task="t",
        )  # fmt: skip

    assert await dead() is not None
    first = await snapshot(app)
    assert await dead() is None
    assert await snapshot(app) == first


async def test_promote_twice_moves_each_due_entry_once(app: App) -> None:
    """Invariant 9: a repeated promote finds nothing left to move.

    ZREM and XADD are one script, so the due member is gone once its entry
    is in the stream; the second run answers 0 and changes nothing. A
    promote that read the zset in one call and XADDed in another could add
    the entry twice when the first reply was lost.
    """
    scripts = await app.scripts()
    now_ms = int(time.time() * 1000)
    for job_id in ("j1", "j2"):
        await scripts.enqueue(await enqueue_call(app, job_id, due_ms=now_ms + 100))
    await anyio.sleep(0.2)  # due by the server's clock, which promote reads (TIME)

    async def promote() -> int:
        moved, dead, _ = await scripts.promote(
            delayed=app.keys.delayed, events=app.keys.events, dlq=app.keys.dlq,
            streams=[app.keys.stream(p) for p in app.settings.priorities],
            priorities=app.settings.priorities, limit=100, group=GROUP,
            result_ttl_ms=60_000,
            jobs=[(j.encode(), app.keys.job(j).encode()) for j in ("j1", "j2")],
        )  # fmt: skip
        assert dead == 0
        return moved

    assert await promote() == 2
    first = await snapshot(app)
    assert await promote() == 0
    assert await snapshot(app) == first
    redis = await app.redis()
    assert await redis.xlen(app.keys.stream("default")) == 2


async def test_requeue_twice_requeues_once(app: App) -> None:
    """Invariant 9: a repeated requeue finds the DLQ entry gone and adds nothing.

    The second run answers None. Without the XRANGE check in requeue.lua
    (and the XDEL in the same script) the job would be back in its stream
    twice and run twice.
    """
    message = await enqueue_and_fetch(app, "j1")
    scripts = await app.scripts()
    dlq_id = await scripts.dead(
        stream=message.stream, dlq=app.keys.dlq, events=app.keys.events,
        job_key=app.keys.job("j1"), group=GROUP, consumer="w", msg_id=message.msg_id,
        deliveries=message.deliveries, reason="poison", now_ms=int(time.time() * 1000),
        result_ttl_ms=60_000, job_id="j1", task="t",
    )  # fmt: skip
    assert dlq_id is not None

    async def requeue() -> bytes | None:
        return await scripts.requeue(
            dlq=app.keys.dlq, stream=message.stream, job_key=app.keys.job("j1"),
            events=app.keys.events, dlq_id=dlq_id, group=GROUP,
            now_ms=int(time.time() * 1000), priority="default",
        )  # fmt: skip

    assert await requeue() is not None
    first = await snapshot(app)
    assert await requeue() is None
    assert await snapshot(app) == first
    redis = await app.redis()
    assert await redis.xlen(app.keys.dlq) == 0
    assert await redis.xlen(message.stream) == 2  # the original entry and the requeued one
