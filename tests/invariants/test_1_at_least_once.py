"""Invariant 1, at-least-once: an accepted job reaches succeeded, dead, or stays pending.

A worker process is SIGKILLed while it runs jobs; the jobs it held are not
gone but come back to another worker once their visibility timeout passes.
The execution ledger (``tests.apps.ledger``) lives outside streamq's keys, so
it counts runs even of a worker that died before recording anything.
"""

from __future__ import annotations

import signal

import pytest

from streamq import JobStatus
from tests.apps import ledger
from tests.conftest import assert_no_key_leak, queue_name, running_worker, wait_until
from tests.invariants._support import (
    START_TIMEOUT_S,
    consumer_prefix,
    delete_ledger,
    dlq_entries,
    events,
    ledger_app,
    ledger_worker,
    pending_entries,
)

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

JOBS = 6
CHILD_CONCURRENCY = 2


async def test_jobs_of_a_sigkilled_worker_are_reclaimed_and_succeed(redis_url: str) -> None:
    """Invariant 1: SIGKILL mid-job loses nothing; the held jobs are reclaimed and succeed.

    Worker A (a child process, concurrency 2) is killed while both of its jobs
    sleep. An in-process worker B then runs the other jobs and, after the
    0.5 s visibility timeout, reclaims A's two from A's PEL (a ``reclaimed``
    event naming A's consumer for each). Every one of the six job ids ends
    ``succeeded``; A's two ran twice (once cut off, once to the end) and the
    rest once: lost 0, unexpected 0. Without the reclaim in the worker's
    fetch loop, A's jobs would sit pending in a dead consumer's PEL forever
    and the wait for all six to succeed would time out.
    """
    app = ledger_app(queue_name(), redis_url)
    async with app:
        try:
            jobs = [await app.enqueue(ledger.SLEEP, f"job{i}", 1.0) for i in range(JOBS)]
            tags = {job.id: f"job{i}" for i, job in enumerate(jobs)}
            async with ledger_worker(app, redis_url, "--concurrency", str(CHILD_CONCURRENCY)) as a:

                async def a_runs_two() -> bool:
                    return sum((await ledger.runs(app)).values()) == CHILD_CONCURRENCY

                await wait_until(a_runs_two, START_TIMEOUT_S, "worker A running two jobs")
                a.signal(signal.SIGKILL)
                assert await a.wait(timeout_s=10) == -signal.SIGKILL
                held_by_a = {p["message_id"] for p in await pending_entries(app)}
                assert len(held_by_a) == CHILD_CONCURRENCY

            async with running_worker(app, concurrency=JOBS):

                async def all_succeeded() -> bool:
                    return all([await j.status() == JobStatus.SUCCEEDED for j in jobs])

                await wait_until(all_succeeded, 20, "every job to succeed")

            reclaimed = await events(app, "reclaimed")
            assert {e[b"msg"] for e in reclaimed} == held_by_a
            assert all(e[b"from"].startswith(consumer_prefix(a.pid)) for e in reclaimed)
            rerun = {tags[e[b"job"].decode()] for e in reclaimed}
            assert len(rerun) == CHILD_CONCURRENCY
            # Nobody's job lost or unexpected; A's two ran twice (cut off, then whole).
            assert await ledger.runs(app) == {t: 2 if t in rerun else 1 for t in tags.values()}
            for job in jobs:
                assert len(await events(app, "succeeded", job.id)) == 1
            assert await pending_entries(app) == []
            assert await dlq_entries(app) == []
            await assert_no_key_leak(app)
        finally:
            await delete_ledger(app)
