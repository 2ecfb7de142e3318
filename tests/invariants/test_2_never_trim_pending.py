"""Invariant 2, never trim what is unacknowledged — and the safety net when it happens.

There is no retention trimming yet, so these tests prove the net under it: a
pending entry whose message was deleted or trimmed anyway (by hand, by an
older version, by another tool) is moved to the DLQ with a reason, on both
paths that can meet it, instead of being silently dropped or looping.
"""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from streamq import App, Settings, Worker
from streamq.keys import GROUP
from streamq.worker.fetch import Fetcher, Message
from tests.conftest import bound_lost_jobs, queue_name, running_worker, wait_until
from tests.invariants._support import dlq_entries, events, pending_entries

pytestmark = pytest.mark.anyio

DELETED_REASON = "message deleted or trimmed while pending"


async def hold_one(app: App, consumer: str) -> Message:
    """Deliver the next message to ``consumer`` and leave it pending there."""
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, consumer, 100)
    await fetcher.ensure_groups()
    (message,) = await fetcher.fetch(1)
    return message


async def remove_entry(redis: Redis, message: Message, how: str) -> None:
    if how == "XDEL":
        assert await redis.xdel(message.stream, message.msg_id) == 1
    else:
        assert await redis.xtrim(message.stream, maxlen=0, approximate=False) == 1
    assert await redis.xrange(message.stream) == []


@pytest.mark.parametrize("how", ["XDEL", "XTRIM"])
async def test_reclaim_dead_letters_a_pending_entry_whose_message_is_gone(
    redis_url: str, how: str
) -> None:
    """Invariant 2 (net): a deleted/trimmed pending entry goes to the DLQ, not into the void.

    A crashed consumer ("ghost") holds the message; the message is then
    removed from the stream. On Valkey, XAUTOCLAIM/XCLAIM would drop such a
    PEL entry and return nothing: the job would vanish without a trace. The
    reclaim script instead sees the entry is gone and writes a DLQ entry with
    the reason, the origin id and the delivery count, acks it and records a
    ``dead`` event. Without that check this test times out waiting for the
    DLQ entry while the PEL quietly empties.
    """
    app = App(
        queue_name(),
        redis_url=redis_url,
        settings=Settings(visibility_timeout_s=0.3, janitor_interval_s=0.05),
    )

    @app.task(name="t")
    async def t() -> None: ...

    async with app:
        await t.enqueue()
        message = await hold_one(app, "ghost")
        redis = await app.redis()
        await remove_entry(redis, message, how)
        async with running_worker(app):

            async def in_dlq() -> bool:
                return len(await dlq_entries(app)) == 1

            await wait_until(in_dlq, 10, "the orphaned PEL entry in the DLQ")
        (dead,) = await dlq_entries(app)
        assert dead[b"dlq_reason"].decode() == DELETED_REASON
        assert dead[b"dlq_origin"] == message.stream.encode()
        assert dead[b"dlq_origin_id"] == message.msg_id
        assert dead[b"dlq_deliveries"] == b"1"
        assert await pending_entries(app) == []
        (event,) = await events(app, "dead")
        assert event[b"msg"] == message.msg_id
        assert event[b"error"].decode() == DELETED_REASON


@pytest.mark.parametrize("how", ["XDEL", "XTRIM"])
async def test_restart_drain_dead_letters_its_own_entry_whose_message_is_gone(
    app: App, how: str
) -> None:
    """Invariant 2 (net): a restarting consumer's drain dead-letters a nil-field own entry.

    ``XREADGROUP ... 0`` keeps returning a pending entry whose message was
    deleted, with nil fields, forever. A worker restarting under the same
    consumer name drains its own PEL first; it must move that entry to the
    DLQ (reason: no fields, deleted or trimmed) and go on. The visibility
    timeout is the default 300 s, so only the drain can have handled it. A
    drain that skipped the entry would leave it pending forever; one that
    re-read it would loop, and the burst worker would never return (the
    10 s deadline fails the test).
    """

    @app.task(name="t")
    async def t() -> str:
        return "ran"

    lost = await t.enqueue()
    message = await hold_one(app, "restarting")
    redis = await app.redis()
    await remove_entry(redis, message, how)
    after = await t.enqueue()  # a good job behind it still runs
    with anyio.fail_after(10):
        await Worker(app, consumer="restarting", burst=True).run()
    (dead,) = await dlq_entries(app)
    assert "deleted or trimmed" in dead[b"dlq_reason"].decode()
    assert dead[b"dlq_origin_id"] == message.msg_id
    # XREADGROUP 0 counts a delivery only for entries that still exist (Valkey
    # 9.1): the fenced dead script matched the count the drain read back.
    assert dead[b"dlq_deliveries"] == b"1"
    assert await pending_entries(app) == []
    assert await after.result(timeout=1) == "ran"
    summary = await redis.xpending(message.stream, GROUP)
    assert int(summary["pending"]) == 0
    # The dead entry had no fields, so no job id: its job hash is bounded by the
    # janitor's lost-job duty (its message is gone), not left non-final forever.
    assert await bound_lost_jobs(app) == [lost.id]
