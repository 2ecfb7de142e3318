"""C4: long jobs are not reclaimed while their worker lives, and come back fast when it dies.

Invariant 6. Worker A (a process) runs N jobs, each several times longer
than the visibility timeout; worker B runs beside it, idle and ready to
reclaim. While A lives, its heartbeats keep every message fresh: after three
visibility timeouts no message was reclaimed and each has been delivered
once. Then A is SIGKILLed mid-job: B must reclaim all N within about the
visibility timeout plus a janitor interval plus a heartbeat interval (the
age of A's last heartbeat at the kill), and finish them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from streamq import App
from streamq.keys import GROUP
from tests.apps.chaos_app import (
    HOLD,
)
from tests.chaos.conftest import Report
from tests.chaos.support import (
    WorkerPool,
    events,
    ledger_counts,
    percentiles,
    producer_app,
    queue_ledger_key,
    quiescent,
    scaled,
    statuses,
    time_budget_s,
    valkey_server,
    wait_for,
    worker_env,
)
from tests.conftest import queue_name

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

APP_PATH = "tests.apps.chaos_app:app"
JOBS = scaled(100, 20)
VIS_S = 1.0 if JOBS < 100 else 2.0
JANITOR_S = 0.25 if JOBS < 100 else 0.5
JOB_S = 6 * VIS_S if JOBS < 100 else 20.0
HEARTBEAT_S = VIS_S / 3
"""streamq beats every third of the visibility timeout (worker/__init__.py)."""
BLOCK_S = 1.0
"""An idle worker's blocking XREADGROUP (the CLI's default ``block_ms``)."""


async def pending_entries(app: App) -> list[dict[str, Any]]:
    redis = await app.redis()
    stream = app.keys.stream(app.tasks[HOLD].options.priority)
    return cast(list[dict[str, Any]], await redis.xpending_range(stream, GROUP, "-", "+", 10_000))


@pytest.mark.timeout(time_budget_s(90, 120))
async def test_c4_heartbeats_keep_long_jobs_and_a_kill_releases_them(
    tmp_path: Path, report: Report
) -> None:
    queue = queue_name()
    ledger_key = queue_ledger_key(queue)
    async with valkey_server(tmp_path / "valkey") as server:
        env = worker_env(server.url, queue, VIS_S, JANITOR_S)
        app = producer_app(server.url, queue, VIS_S, JANITOR_S)
        async with (
            app,
            WorkerPool(tmp_path / "workers", env, APP_PATH, "--concurrency", str(JOBS)) as pool,
        ):
            (a,) = await pool.spawn_ready(1)
            jobs = await app.tasks[HOLD].enqueue_many([(f"h{i}", JOB_S) for i in range(JOBS)])
            ids = [j.id for j in jobs]

            async def all_running() -> bool:
                return set((await statuses(app, ids)).values()) == {"running"}

            await wait_for(all_running, 30, "A to run every job")
            running_since = time.monotonic()
            (b,) = await pool.spawn_ready(1)
            await anyio.sleep(max(0.0, running_since + 3 * VIS_S - time.monotonic()))
            alive_pending = await pending_entries(app)
            reclaimed_while_alive = len(await events(app, "reclaimed"))
            assert time.monotonic() - running_since < JOB_S, "jobs too short for the check"

            killed_ms = await pool.kill(a)

            async def all_with_b() -> bool:
                owners = {p["consumer"].decode() for p in await pending_entries(app)}
                return owners == {b.consumer}

            await wait_for(all_with_b, VIS_S * 5 + 10, "B to reclaim every job", 0.02)
            await wait_for(lambda: quiescent(app), JOB_S + 30, "B to finish the jobs")
            final = await statuses(app, ids)
            reclaimed = await events(app, "reclaimed")
            succeeded = [e for e in await events(app, "succeeded") if e["job"] in set(ids)]
            runs = await ledger_counts(server.url, ledger_key)

    after_kill_ms = [int(e["ts"]) - killed_ms for e in reclaimed]
    bound_ms = int((VIS_S + JANITOR_S + HEARTBEAT_S) * 1000)
    report(
        "C4",
        jobs=JOBS, job_s=JOB_S, vis_s=VIS_S, janitor_s=JANITOR_S,
        alive_for_s=round(3 * VIS_S, 1), reclaimed_while_alive=reclaimed_while_alive,
        deliveries_while_alive=sorted({int(p["times_delivered"]) for p in alive_pending}),
        reclaimed_after_kill=len(reclaimed), redelivered_ms_after_kill=percentiles(after_kill_ms),
        plan_bound_ms=bound_ms, bound_with_idle_block_ms=bound_ms + int(BLOCK_S * 1000),
        succeeded=sum(1 for s in final.values() if s == "succeeded"),
        succeeded_deliveries=sorted({int(e["deliveries"]) for e in succeeded}),
        runs_per_job=sorted(set(runs.values())),
    )  # fmt: skip
    assert reclaimed_while_alive == 0, "a live worker's long job was reclaimed"
    assert len(alive_pending) == JOBS
    assert {int(p["times_delivered"]) for p in alive_pending} == {1}
    assert len(reclaimed) == JOBS
    assert all(s == "succeeded" for s in final.values())
    assert {int(e["deliveries"]) for e in succeeded} == {2}
