"""Invariant 3, fencing: a worker that lost its message can no longer ack, record or retry it.

A paused worker (SIGSTOP past the visibility timeout) stands for any worker
that lost a message to a reclaim: partitioned, swapping, in a long GC.
When it wakes up, its heartbeat and its outcome are both checked against
the PEL owner and delivery count, and refused.
"""

from __future__ import annotations

import os
import signal

import pytest

from streamq import App, JobStatus
from streamq.keys import GROUP
from streamq.scripts import Outcome
from streamq.worker.fetch import Fetcher
from streamq.worker.outcome import ALREADY_RECORDED, LOST, RECORDED
from tests.apps import ledger
from tests.conftest import assert_no_key_leak, queue_name, running_worker, wait_until
from tests.invariants._support import (
    START_TIMEOUT_S,
    consumer_prefix,
    delete_ledger,
    events,
    ledger_app,
    ledger_worker,
    pending_entries,
)

pytestmark = pytest.mark.anyio

FIRST_RUN_S = 1.5
"""A's run: frozen 0.5 s in, so it would end while frozen or right after."""
LATER_RUN_S = {"after-b-finished": 0.2, "while-b-runs": 3.0}
"""B's run: done before A resumes, or still running (holding the message) when
A's late outcome arrives, at least 2 s before B's own."""


@pytest.mark.chaos
@pytest.mark.parametrize("resume", sorted(LATER_RUN_S))
async def test_paused_worker_cannot_record_a_job_another_worker_reclaimed(
    redis_url: str, resume: str
) -> None:
    """Invariant 3: A (SIGSTOPped past the timeout) is refused after B reclaimed its job.

    A child worker A starts a 1.5 s job and is frozen. After the 0.5 s
    visibility timeout an in-process worker B reclaims it (a ``reclaimed``
    event from A's consumer). A is resumed either once B has completed the
    job ("after-b-finished") or while B still runs it ("while-b-runs"). Either
    way A's handler ends and its outcome script finds the message no longer
    pending to A with A's delivery count: A logs "job lost ownership; its
    outcome was dropped", the audit gets a ``lost-ownership`` event, and
    nothing of A's is written. The job's result is B's (this process's pid,
    not A's), there is exactly one ``succeeded`` event, from B, and the PEL
    is empty. Without the PEL owner check in complete.lua, A's outcome in
    "while-b-runs" would ack B's message and store A's pid as the result;
    answering a late outcome "already recorded" (as if A had recorded it)
    makes A log "job succeeded" for a result it never wrote.
    """
    app = ledger_app(queue_name(), redis_url)
    async with app:
        try:
            job = await app.enqueue(ledger.SLOW_FIRST, "only", FIRST_RUN_S, LATER_RUN_S[resume])
            async with ledger_worker(app, redis_url) as a:

                async def a_runs_it() -> bool:
                    return (await ledger.runs(app)).get("only") == 1

                await wait_until(a_runs_it, START_TIMEOUT_S, "worker A running the job")
                a.signal(signal.SIGSTOP)
                try:
                    async with running_worker(app) as b:

                        async def b_reclaimed() -> bool:
                            return (await ledger.runs(app)).get("only") == 2

                        async def b_finished() -> bool:
                            return await job.status() == JobStatus.SUCCEEDED

                        if resume == "while-b-runs":
                            await wait_until(b_reclaimed, 10, "worker B to reclaim the job")
                            a.signal(signal.SIGCONT)
                            await a.wait_for_line(
                                lambda line: job.id in line, 10, "A's late outcome"
                            )
                            assert await job.status() == JobStatus.RUNNING, "B finished first"
                        await wait_until(b_finished, 15, "worker B to finish the job")
                finally:
                    a.signal(signal.SIGCONT)
                await a.wait_for_line(lambda line: job.id in line, 10, "A's late outcome")
                a.signal(signal.SIGTERM)
                assert await a.wait(timeout_s=10) == 0, a.output()

            assert await job.result(timeout=1) == os.getpid()
            info = await job.info()
            assert info["worker"] == b.consumer
            assert (await ledger.runs(app))["only"] == 2
            (reclaimed,) = await events(app, "reclaimed", job.id)
            assert reclaimed[b"from"].startswith(consumer_prefix(a.pid))
            assert reclaimed[b"worker"] == b.consumer.encode()
            (succeeded,) = await events(app, "succeeded", job.id)
            assert succeeded[b"worker"] == b.consumer.encode()
            assert await events(app, "retried", job.id) == []
            assert await events(app, "failed", job.id) == []
            assert await pending_entries(app) == []
            redis = await app.redis()
            assert await redis.xlen(app.keys.stream("default")) == 1  # no retry entry added
            await assert_no_key_leak(app)
            # A must not report the job as its own success: its outcome was dropped.
            a_outcomes = [r["event"] for r in a.records() if r.get("job_id") == job.id]
            assert a_outcomes == ["job lost ownership; its outcome was dropped"], a.output()
            (dropped,) = await events(app, "lost-ownership", job.id)  # and the audit says so
            assert dropped[b"worker"].startswith(consumer_prefix(a.pid))
        finally:
            await delete_ledger(app)


async def test_heartbeat_script_never_takes_back_a_reclaimed_message(app: App) -> None:
    """Invariant 3/6: the heartbeat of the old owner reports the loss and steals nothing.

    "a" holds the message; "b" claims it (as a reclaim would, delivery 2).
    The heartbeat script for "a" must answer False and leave the entry with
    "b", delivery count 2. A blind ``XCLAIM ... JUSTID`` heartbeat would move
    the entry back to "a" (the owner assertion fails), and "a" could then
    ack the job "b" is running.
    """

    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, "a", 100)
    await fetcher.ensure_groups()
    (message,) = await fetcher.fetch(1)
    redis = await app.redis()
    scripts = await app.scripts()
    streams = fetcher.streams
    index = streams.index(message.stream)

    assert await scripts.heartbeat(streams, GROUP, "a", [(index, message.msg_id)]) == [True]
    await redis.xclaim(message.stream, GROUP, "b", 0, [message.msg_id])
    assert await scripts.heartbeat(streams, GROUP, "a", [(index, message.msg_id)]) == [False]

    (entry,) = await redis.xpending_range(message.stream, GROUP, "-", "+", 10)
    assert entry["consumer"] == b"b"
    assert entry["times_delivered"] == 2
    # The new owner's heartbeat works and, being JUSTID, adds no delivery.
    assert await scripts.heartbeat(streams, GROUP, "b", [(index, message.msg_id)]) == [True]
    (entry,) = await redis.xpending_range(message.stream, GROUP, "-", "+", 10)
    assert (entry["consumer"], entry["times_delivered"]) == (b"b", 2)
    # After the ack there is nothing left to heartbeat, for anyone.
    await redis.xack(message.stream, GROUP, message.msg_id)
    assert await scripts.heartbeat(streams, GROUP, "b", [(index, message.msg_id)]) == [False]
    await redis.delete(app.keys.job(job.id))  # acked by hand: no outcome will come


async def test_late_outcome_after_another_worker_recorded_the_job_is_lost(app: App) -> None:
    """Invariant 3: the loser's outcome is answered LOST, not "already recorded".

    "a" runs the job; "b" reclaims it and records its success. When "a"'s
    outcome finally arrives, complete.lua must answer 0 (lost ownership):
    the message was recorded by another consumer's delivery, not by an
    earlier run of this same call. Answering 2 ("already recorded by an
    earlier run", the client-retry case of invariant 9) makes the stale
    worker log "job succeeded" for a result it never wrote. Nothing may be
    written either way: the job keeps b's result and has one event.
    """

    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    redis = await app.redis()
    scripts = await app.scripts()
    fetcher = Fetcher(redis, scripts, app.keys, app.settings, "a", 100)
    await fetcher.ensure_groups()
    (message,) = await fetcher.fetch(1)
    await redis.xclaim(message.stream, GROUP, "b", 0, [message.msg_id])

    def outcome(deliveries: int, result: bytes) -> Outcome:
        return Outcome(
            stream=message.stream, job_key=app.keys.job(job.id), msg_id=message.msg_id,
            deliveries=deliveries, job_id=job.id, task="t", attempt=1, status="succeeded",
            result_or_error_type=result, error="", traceback="", duration_ms=1,
        )  # fmt: skip

    async def complete(consumer: str, o: Outcome) -> list[int]:
        return await scripts.complete(
            app.keys.events, [o], delayed=app.keys.delayed, dlq=app.keys.dlq, group=GROUP,
            consumer=consumer, now_ms=0, result_ttl_ms=60_000,
        )  # fmt: skip

    assert await complete("b", outcome(2, b'"b"')) == [RECORDED]
    assert await complete("b", outcome(2, b'"b"')) == [ALREADY_RECORDED]  # b's own retry
    assert await job.result(timeout=1) == "b"
    assert await complete("a", outcome(1, b'"a"')) == [LOST]
    assert await job.result(timeout=1) == "b"
    assert len(await events(app, "succeeded", job.id)) == 1
