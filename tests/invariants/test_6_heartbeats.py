"""Invariant 6: a long job is not reclaimed while its worker is alive.

The visibility timeout bounds crash detection, not job length: the worker
running a job heartbeats it (XCLAIM ... JUSTID, idle reset, no delivery
added), so other workers, reclaiming every 0.05 s, never see it idle long
enough to take it.
"""

from __future__ import annotations

import anyio
import pytest

from streamq import JobStatus
from tests.apps import ledger
from tests.conftest import assert_no_key_leak, queue_name, running_worker, wait_until
from tests.invariants._support import delete_ledger, events, ledger_app, pending_entries

pytestmark = pytest.mark.anyio

VISIBILITY_S = 0.5
JOB_S = 1.75  # 3.5 visibility timeouts
JOBS = 4


async def test_jobs_longer_than_the_visibility_timeout_are_never_reclaimed(
    redis_url: str,
) -> None:
    """Invariant 6: four 1.75 s jobs with a 0.5 s visibility timeout, two workers, no reclaim.

    Two workers (separate Apps, as separate processes would be) share four
    jobs, each running 3.5 visibility timeouts. While they run, a sampler
    reads the PEL every few ms: no entry's delivery count ever exceeds 1 and
    no idle time reaches the timeout. Afterwards: no ``reclaimed`` event,
    every job ran exactly once (ledger) and succeeded on delivery 1. Without
    the heartbeat, the other worker's reclaim would take each job after
    0.5 s (delivery count 2, the job run twice) and again after each further
    0.5 s, so no job would ever finish; the test stops at the first reclaim.
    """
    name = queue_name()
    first = ledger_app(name, redis_url, visibility_timeout_s=VISIBILITY_S)
    second = ledger_app(name, redis_url, visibility_timeout_s=VISIBILITY_S)
    max_deliveries = 0
    max_idle_ms = 0

    async def sample_pel() -> None:
        nonlocal max_deliveries, max_idle_ms
        while True:
            for entry in await pending_entries(first):
                max_deliveries = max(max_deliveries, entry["times_delivered"])
                max_idle_ms = max(max_idle_ms, entry["time_since_delivered"])
            await anyio.sleep(0.005)

    async with first, second:
        try:
            jobs = [await first.enqueue(ledger.SLEEP, f"job{i}", JOB_S) for i in range(JOBS)]
            async with (
                running_worker(first, concurrency=2),
                running_worker(second, concurrency=2),
                anyio.create_task_group() as sampler,
            ):
                sampler.start_soon(sample_pel)

                async def all_succeeded() -> bool:
                    assert max_deliveries <= 1, "a running job was reclaimed"
                    return all([await j.status() == JobStatus.SUCCEEDED for j in jobs])

                await wait_until(all_succeeded, 20, "every long job to succeed")
                sampler.cancel_scope.cancel()

            assert max_deliveries == 1
            assert 0 < max_idle_ms < VISIBILITY_S * 1000
            assert await events(first, "reclaimed") == []
            assert await ledger.runs(first) == {f"job{i}": 1 for i in range(JOBS)}
            for job in jobs:
                (succeeded,) = await events(first, "succeeded", job.id)
                assert succeeded[b"deliveries"] == b"1"
                assert int(succeeded[b"duration_ms"]) >= JOB_S * 1000
            await assert_no_key_leak(first)
        finally:
            await delete_ledger(first)
