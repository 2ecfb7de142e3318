"""C3: a worker paused (SIGSTOP) past the visibility timeout is fenced when it wakes.

Invariants 3 and 6. Two worker processes, A and B. Each round enqueues one
job; whichever worker takes it is A. A is SIGSTOPped shortly into the job and
stays stopped past the visibility timeout, so B reclaims the message and runs
the job again. Then A is SIGCONTed: its handler finishes at once (its sleep
is over) and it tries to record the outcome, and its heartbeat tries to renew
the message. Odd rounds wake A while B still runs the job (A is refused by
the PEL owner check); even rounds wake A after B recorded its result (A is
refused because the message is acked and the job already has its outcome).

Passes when, every round, the stored result is B's (result overwrites 0),
exactly one ``succeeded`` event exists and it is B's (double acks 0), the
message was reclaimed exactly once (A's heartbeat never took it back), and
nothing is left pending. The ledger shows both runs: at-least-once, not
exactly-once.
"""

from __future__ import annotations

import json
import signal
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
    WorkerProcess,
    events,
    ledger_counts,
    percentiles,
    pid_of_consumer,
    producer_app,
    queue_ledger_key,
    rng,
    scaled,
    time_budget_s,
    valkey_server,
    wait_for,
    worker_env,
)
from tests.conftest import queue_name

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

APP_PATH = "tests.apps.chaos_app:app"
ROUNDS = scaled(50, 6)
VIS_S = 1.0
JANITOR_S = 0.25
JOB_S = 2.0
PAUSE_AFTER_S = 0.5
PAUSE_S = 2.5
"""Longer than the visibility timeout, and long enough that A's job is over when it wakes."""
LOST_LOG = "job lost ownership; its outcome was dropped"
SUCCESS_LOG = "job succeeded"


async def outcome_logged(worker: WorkerProcess, job_id: str) -> str | None:
    """What ``worker`` logged when it tried to record ``job_id``'s outcome (None: not yet)."""
    for record in await worker.records():
        if record.get("job_id") == job_id and record.get("event") in (LOST_LOG, SUCCESS_LOG):
            return str(record["event"])
    return None


async def job_field(app: App, job_id: str, name: str) -> str | None:
    raw = await (await app.redis()).hget(app.keys.job(job_id), name)
    return None if raw is None else cast(bytes, raw).decode()


async def one_round(
    app: App, workers: list[WorkerProcess], n: int, jitter: float
) -> dict[str, Any]:
    """Enqueue one job, pause its worker A past the visibility timeout, wake it; the facts."""
    redis = await app.redis()
    key = f"r{n}"
    job = await app.tasks[HOLD].enqueue(key, JOB_S)

    async def status_is(wanted: str) -> bool:
        return await job_field(app, job.id, "status") == wanted

    await wait_for(lambda: status_is("running"), 15, f"round {n}: job running")
    info = await job.info()
    (a,) = (w for w in workers if w.consumer == info["worker"])
    (b,) = (w for w in workers if w is not a)
    stream, msg_id = app.keys.stream(info["priority"]), info["msg_id"]

    async def owned_by_b() -> bool:
        pending = await redis.xpending_range(stream, GROUP, msg_id, msg_id, 1)
        return bool(pending) and cast(bytes, pending[0]["consumer"]).decode() == b.consumer

    async def a_tried() -> bool:
        return await outcome_logged(a, job.id) is not None

    await anyio.sleep(PAUSE_AFTER_S * jitter)  # the fault's timing, not a wait for a state
    a.signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        await wait_for(owned_by_b, VIS_S * 3 + 10, f"round {n}: B to reclaim")
        reclaimed_after_s = time.monotonic() - paused
        if n % 2 == 0:
            await anyio.sleep(max(0.0, paused + PAUSE_S - time.monotonic()))
        else:
            await wait_for(lambda: status_is("succeeded"), JOB_S + 15, f"round {n}: B done")
    finally:
        a.signal(signal.SIGCONT)
    await wait_for(a_tried, 15, f"round {n}: A's outcome attempt")
    await wait_for(lambda: status_is("succeeded"), JOB_S + 15, f"round {n}: job succeeded")
    return {
        "a": a.consumer, "b": b.consumer, "job": job.id, "key": key,
        "b_done_first": n % 2 == 1, "reclaimed_after_s": reclaimed_after_s,
        "a_logged": await outcome_logged(a, job.id),
        "result": json.loads((await job.info())["result"]), "b_pid": b.pid,
        "pending": await redis.xpending_range(stream, GROUP, msg_id, msg_id, 1),
    }  # fmt: skip


@pytest.mark.timeout(time_budget_s(90, 250))
async def test_c3_paused_worker_is_fenced_after_another_reclaims_its_job(
    tmp_path: Path, report: Report
) -> None:
    random = rng("C3")
    queue = queue_name()
    ledger_key = queue_ledger_key(queue)

    async with valkey_server(tmp_path / "valkey") as server:
        env = worker_env(server.url, queue, VIS_S, JANITOR_S)
        app = producer_app(server.url, queue, VIS_S, JANITOR_S)
        async with (
            app,
            WorkerPool(tmp_path / "workers", env, APP_PATH, "--concurrency", "4") as pool,
        ):
            workers = await pool.spawn_ready(2)
            rounds = [
                await one_round(app, workers, n, random.uniform(0.5, 1.5)) for n in range(ROUNDS)
            ]
            succeeded = await events(app, "succeeded")
            reclaimed = await events(app, "reclaimed")
            runs = await ledger_counts(server.url, ledger_key)

    overwrites = double_acks = not_fenced = stolen_back = 0
    for r in rounds:
        mine = [e for e in succeeded if e["job"] == r["job"]]
        claims = [e for e in reclaimed if e["job"] == r["job"]]
        overwrites += r["result"] != r["b_pid"]
        double_acks += len(mine) != 1 or mine[0]["worker"] != r["b"]
        stolen_back += (
            len(claims) != 1 or claims[0]["from"] != r["a"] or claims[0]["worker"] != r["b"]
        )
        not_fenced += bool(r["pending"]) or r["result"] != r["b_pid"]
    fenced = len(rounds) - not_fenced
    report(
        "C3",
        rounds=len(rounds), fenced=fenced, result_overwrites=overwrites, double_acks=double_acks,
        heartbeat_took_back=stolen_back,
        a_refused_by_owner_check=sum(r["a_logged"] == LOST_LOG for r in rounds),
        a_logged_success_after_b_recorded=sum(r["a_logged"] == SUCCESS_LOG for r in rounds),
        both_ran=sum(runs.get(r["key"], 0) == 2 for r in rounds),
        reclaimed_after_pause_s=percentiles([r["reclaimed_after_s"] for r in rounds]),
        vis_s=VIS_S, job_s=JOB_S, pause_s=PAUSE_S,
    )  # fmt: skip
    assert fenced == len(rounds) == ROUNDS
    assert overwrites == 0
    assert double_acks == 0
    assert stolen_back == 0
    assert all(pid_of_consumer(r["b"]) == r["b_pid"] for r in rounds)
