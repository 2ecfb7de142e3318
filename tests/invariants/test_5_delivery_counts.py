"""Invariant 5: delivery counts come from Redis; handler errors count as attempts.

Two counters, two kinds of failure. A handler that raises is a failed
*attempt*: the worker records it and the retry is a new stream entry with
``attempt`` + 1, delivered once. A worker that dies mid-job records nothing:
only Redis's delivery count (bumped by each reclaim) shows it, so a message
that kills every worker that runs it ends in the DLQ after ``max_deliveries``.
"""

from __future__ import annotations

import pytest

from streamq import App, JobStatus, Settings
from tests.apps import ledger
from tests.conftest import assert_no_key_leak, queue_name, running_worker, wait_until
from tests.invariants._support import (
    START_TIMEOUT_S,
    delete_ledger,
    dlq_entries,
    events,
    ledger_app,
    ledger_worker,
    pending_entries,
)

pytestmark = pytest.mark.anyio


async def test_handler_errors_count_as_attempts_in_the_envelope(redis_url: str) -> None:
    """Invariant 5: each handler error adds an attempt; each entry is delivered once.

    A handler fails twice, then succeeds. The stream holds three entries for
    the job with ``attempt`` 1, 2, 3 (retries pass through the delayed set
    with a 0.01 s backoff base); each ``retried`` event carries the Redis
    delivery count of its entry, 1; the job hash says 3 attempts. Counting
    errors by delivery instead (re-reading one entry) would show one entry
    delivered three times; counting in worker memory would lose the count
    across workers.
    """
    app = App(queue_name(), redis_url=redis_url, settings=Settings(janitor_interval_s=0.05))
    calls: list[int] = []

    @app.task(name="flaky", max_retries=3, backoff_base=0.01)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError(f"failure {len(calls)}")
        return "third time lucky"

    async with app:
        job = await flaky.enqueue()
        async with running_worker(app):
            assert await job.result(timeout=15) == "third time lucky"
        redis = await app.redis()
        entries = [
            fields
            for _, fields in await redis.xrange(app.keys.stream("default"))
            if fields[b"id"] == job.id.encode()
        ]
        assert [e[b"attempt"] for e in entries] == [b"1", b"2", b"3"]
        retried = await events(app, "retried", job.id)
        assert [(e[b"attempt"], e[b"deliveries"]) for e in retried] == [(b"1", b"1"), (b"2", b"1")]
        assert [e[b"error_type"] for e in retried] == [b"ValueError"] * 2
        (succeeded,) = await events(app, "succeeded", job.id)
        assert (succeeded[b"attempt"], succeeded[b"deliveries"]) == (b"3", b"1")
        assert (await job.info())["attempts"] == "3"
        assert await events(app, "reclaimed") == []
        await assert_no_key_leak(app)


MAX_DELIVERIES = 3


@pytest.mark.chaos
async def test_os_exit_poison_runs_max_deliveries_times_then_dead_letters(
    redis_url: str,
) -> None:
    """Invariant 5: a job that kills its worker is counted by Redis, then dead-lettered.

    The handler calls ``os._exit(1)``: no exception, no outcome, the worker
    process is simply gone. Worker children are started one after another;
    each reclaims the message (the delivery count rises: 1, 2, 3) and dies.
    The fourth sees delivery 4 > ``max_deliveries`` 3 and moves the message
    to the DLQ (``TooManyDeliveries``) without running it: the handler ran
    exactly 3 times, counted in the ledger outside streamq's keys. The
    envelope still says attempt 1 (no handler error was ever recorded). A
    worker counting deliveries in its own memory would start at zero in
    every new process, and the poison would kill workers forever.
    """
    app = ledger_app(
        queue_name(), redis_url, visibility_timeout_s=0.3, max_deliveries=MAX_DELIVERIES
    )
    settings = {"visibility_timeout_s": 0.3, "max_deliveries": MAX_DELIVERIES}
    async with app:
        try:
            job = await app.enqueue(ledger.EXIT, "poison")
            exits = 0
            for _ in range(MAX_DELIVERIES + 2):  # bounded: one spare worker past the limit
                async with ledger_worker(app, redis_url, **settings) as worker:

                    async def died_or_dead() -> bool:
                        return (
                            worker.process.returncode is not None
                            or await job.status() == JobStatus.DEAD
                        )

                    await wait_until(died_or_dead, START_TIMEOUT_S, "the worker to die or DLQ it")
                    if worker.process.returncode is not None:
                        assert worker.process.returncode == 1, worker.output()
                        exits += 1
                        continue
                    break
            assert exits == MAX_DELIVERIES
            assert await job.status() == JobStatus.DEAD
            assert (await ledger.runs(app)) == {"poison": MAX_DELIVERIES}
            info = await job.info()
            assert info["error_type"] == "TooManyDeliveries"
            assert f"delivered {MAX_DELIVERIES + 1} times" in info["error"]
            (dead,) = await dlq_entries(app)
            assert dead[b"id"] == job.id.encode()
            assert dead[b"dlq_deliveries"] == str(MAX_DELIVERIES + 1).encode()
            assert dead[b"attempt"] == b"1"
            reclaimed = await events(app, "reclaimed", job.id)
            assert [e[b"deliveries"] for e in reclaimed] == [b"2", b"3", b"4"]
            assert await pending_entries(app) == []
            await assert_no_key_leak(app)
        finally:
            await delete_ledger(app)
