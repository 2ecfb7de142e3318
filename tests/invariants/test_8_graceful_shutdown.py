"""Invariant 8: a shutdown leaves unfinished jobs pending, and another worker finishes them.

tests/test_cli_worker.py covers the stopping itself (SIGTERM stops fetching,
in-flight jobs finish within the grace, a second signal stops at once, a job
cut off by the grace is not acked). This module follows the cut-off job to
its end: nothing the stopped worker left behind is lost.
"""

from __future__ import annotations

import os
import signal

import pytest

from streamq import JobStatus
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


async def test_job_cancelled_past_grace_is_reclaimed_and_succeeds(redis_url: str) -> None:
    """Invariant 8: a job cut off by the grace period is run again elsewhere, not lost.

    Worker A (a child) runs a job that hangs on its first run; SIGTERM with
    ``--grace 0.2`` cancels it and A exits 0 without acking it: the job is
    still ``running`` and pending to A. An in-process worker B reclaims it
    after the 0.5 s visibility timeout (a ``reclaimed`` event from A) and the
    second run succeeds with B's result. Had A acked or recorded the
    cancelled handler, the job would be final (or the PEL empty) before B
    started, and it would never have run to the end.
    """
    app = ledger_app(queue_name(), redis_url)
    async with app:
        try:
            job = await app.enqueue(ledger.STUCK_ONCE, "once")
            async with ledger_worker(app, redis_url, "--grace", "0.2") as a:

                async def a_runs_it() -> bool:
                    return (await ledger.runs(app)).get("once") == 1

                await wait_until(a_runs_it, START_TIMEOUT_S, "worker A running the job")
                a.signal(signal.SIGTERM)
                assert await a.wait(timeout_s=10) == 0, a.output()
            assert "job succeeded" not in [r["event"] for r in a.records()]
            assert await job.status() == JobStatus.RUNNING
            (left,) = await pending_entries(app)
            assert left["consumer"].startswith(consumer_prefix(a.pid))

            async with running_worker(app):
                assert await job.result(timeout=15) == os.getpid()
            (reclaimed,) = await events(app, "reclaimed", job.id)
            assert reclaimed[b"from"] == left["consumer"]
            assert await ledger.runs(app) == {"once": 2}
            assert len(await events(app, "succeeded", job.id)) == 1
            assert await pending_entries(app) == []
            await assert_no_key_leak(app)
        finally:
            await delete_ledger(app)
