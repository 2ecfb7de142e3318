"""C6: SIGTERM with jobs in flight: they finish within the grace, nothing more is fetched.

Invariant 8, at the CHAOS-PLAN size. A worker process (concurrency 8,
``--grace 10``) runs 8 three-second jobs with 4 more waiting, and gets
SIGTERM; 2 more jobs arrive after the signal. It must let the 8 finish, fetch
nothing after the signal, and exit 0. Then a worker with ``--grace 0.5`` gets
SIGTERM while running 8 such jobs: it exits before they end, and none of them
may be acked or recorded (they did not run to the end), so all 8 stay pending
and a later worker reclaims and finishes them.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.apps.chaos_app import (
    HOLD,
)
from tests.chaos.conftest import Report
from tests.chaos.support import (
    WorkerPool,
    WorkerProcess,
    backlog,
    events,
    ledger_counts,
    producer_app,
    queue_ledger_key,
    quiescent,
    statuses,
    valkey_server,
    wait_for,
    worker_env,
)
from tests.conftest import queue_name

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

APP_PATH = "tests.apps.chaos_app:app"
IN_FLIGHT = 8
JOB_S = 3.0
VIS_S = 1.0
JANITOR_S = 0.25


async def exit_code(worker: WorkerProcess, timeout_s: float) -> int:
    async def exited() -> bool:
        return worker.process.returncode is not None

    await wait_for(exited, timeout_s, f"worker {worker.pid} to exit")
    return int(worker.process.returncode or 0)


@pytest.mark.timeout(120)
async def test_c6_sigterm_finishes_in_flight_jobs_and_cuts_off_past_the_grace(
    tmp_path: Path, report: Report
) -> None:
    queue = queue_name()
    ledger_key = queue_ledger_key(queue)
    async with valkey_server(tmp_path / "valkey") as server:
        env = worker_env(server.url, queue, VIS_S, JANITOR_S)
        app = producer_app(server.url, queue, VIS_S, JANITOR_S)
        hold = app.tasks[HOLD]
        options = ("--concurrency", str(IN_FLIGHT))
        async with (
            app,
            Redis.from_url(server.url) as ledger,
            WorkerPool(tmp_path / "graceful", env, APP_PATH, *options, "--grace", "10") as first,
            WorkerPool(tmp_path / "cut", env, APP_PATH, *options, "--grace", "0.5") as second,
            WorkerPool(tmp_path / "after", env, APP_PATH, *options) as third,
        ):
            # 1. Grace longer than the jobs: the 8 finish, nothing else is fetched.
            jobs = await hold.enqueue_many([(f"a{i}", JOB_S) for i in range(IN_FLIGHT + 4)])
            (graceful,) = await first.spawn_ready(1)

            async def running(ids: list[str]) -> bool:
                return list((await statuses(app, ids)).values()).count("running") == IN_FLIGHT

            ids = [j.id for j in jobs]
            await wait_for(lambda: running(ids), 30, "8 jobs running")
            signalled_ms = int(time.time() * 1000)
            graceful.signal(signal.SIGTERM)
            late = await hold.enqueue_many([(f"late{i}", JOB_S) for i in range(2)])
            graceful_exit = await exit_code(graceful, JOB_S + 10)
            graceful_s = time.time() - signalled_ms / 1000
            runs = await ledger_counts(ledger, ledger_key)
            started_after = [e for e in await events(app, "started") if int(e["ts"]) > signalled_ms]
            left = await backlog(app)
            # 2. Grace shorter than the jobs: the worker leaves them pending, unrecorded.
            waiting = [j.id for j in jobs if runs.get(f"a{ids.index(j.id)}", 0) == 0]
            waiting += [j.id for j in late]
            extra = await hold.enqueue_many([(f"b{i}", JOB_S) for i in range(2)])
            waiting += [j.id for j in extra]
            (cut,) = await second.spawn_ready(1)
            await wait_for(lambda: running(waiting), 30, "the next 8 jobs running")
            cut.signal(signal.SIGTERM)
            cut_exit = await exit_code(cut, 10)
            cut_runs = await ledger_counts(ledger, ledger_key)
            cut_statuses = await statuses(app, waiting)
            cut_pending = (await backlog(app))["pending"]
            # 3. Another worker reclaims them after the visibility timeout.
            await third.spawn_ready(1)
            await wait_for(lambda: quiescent(app), VIS_S * 3 + JOB_S + 20, "the cut jobs to finish")
            final = await statuses(app, [*ids, *waiting])
            final_runs = await ledger_counts(ledger, ledger_key)

    finished_in_grace = sum(1 for n in runs.values() if n == 1)
    report(
        "C6",
        in_flight=IN_FLIGHT, job_s=JOB_S, graceful_exit=graceful_exit,
        graceful_exit_after_s=round(graceful_s, 1), finished_in_grace=finished_in_grace,
        fetched_after_signal=len(started_after), left_waiting=left,
        cut_exit=cut_exit, cut_ran_to_end=sum(cut_runs.values()) - sum(runs.values()),
        cut_recorded=sum(1 for s in cut_statuses.values() if s in {"succeeded", "failed"}),
        cut_left_pending=cut_pending,
        all_finally_succeeded=all(s == "succeeded" for s in final.values()),
        runs_per_job=sorted(set(final_runs.values())),
    )  # fmt: skip
    assert graceful_exit == 0
    assert finished_in_grace == IN_FLIGHT
    assert started_after == []
    assert left == {"lag": 6, "pending": 0, "delayed": 0}
    assert cut_exit == 0
    assert cut_runs == runs, "a job cut off by the grace was counted as run"
    assert cut_pending == IN_FLIGHT
    assert all(s == "running" for s in cut_statuses.values())
    assert all(s == "succeeded" for s in final.values())
    assert set(final_runs.values()) == {1}
