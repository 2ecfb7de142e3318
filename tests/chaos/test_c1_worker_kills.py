"""C1: SIGKILL a random worker about every second under load; nothing accepted is lost.

Invariant 1 (at-least-once) with crashes at arbitrary points: two producers
enqueue, four worker processes (concurrency 16) run the jobs, and about every
second one worker is SIGKILLed (mid-fetch, mid-handler, mid-ack: wherever it
is) and a replacement started (at most one replacement may still be starting
when the next kill comes: see ``support.kill_and_replace``). Each
handler that runs to its end adds 1 to a ledger hash under a prefix streamq
never writes. The run passes when every job whose
enqueue returned ran and ended ``succeeded`` (lost 0), no job ran that nobody
enqueued (unexpected 0), and no job has two stream entries. Duplicated runs
are expected (a job killed after its handler, before its ack, runs again) and
are reported with the bound in-flight × kills, as is the reclaim latency from
the kill to the ``reclaimed`` event of each job the killed worker held.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from streamq import App
from tests.apps.chaos_app import (
    WORK,
    Ledger,
    chaos_settings,
    register,
)
from tests.chaos.conftest import Report
from tests.chaos.support import (
    Tally,
    WorkerPool,
    entries_per_job,
    events,
    kill_and_replace,
    ledger_counts,
    percentiles,
    pid_of_consumer,
    queue_ledger_key,
    quiescent,
    rng,
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
JOBS = scaled(20_000, 2_000)
PRODUCERS = 2
BATCH = 50
WORKERS = 4
CONCURRENCY = 16
VIS_S = 2.0
JANITOR_S = 0.5
KILL_EVERY_S = 1.0
JOB_MS = (20, 180)
"""Each job sleeps uniformly in this range: long enough that every kill hits running jobs."""
RUN_DEADLINE_S = time_budget_s(60, 240)


@pytest.mark.timeout(time_budget_s(120, 300))
async def test_c1_sigkill_a_worker_every_second_loses_nothing(
    tmp_path: Path, report: Report
) -> None:
    random = rng("C1")
    queue = queue_name()
    ledger_key = queue_ledger_key(queue)
    work_items = [(f"k{i}", random.randint(*JOB_MS)) for i in range(JOBS)]
    attempted = {key for key, _ in work_items}
    acked: dict[str, str] = {}  # job id -> ledger key, once enqueue returned

    async with valkey_server(tmp_path / "valkey") as server:
        env = worker_env(server.url, queue, VIS_S, JANITOR_S)
        settings = chaos_settings(server.url, VIS_S, JANITOR_S)
        observer = register(App(queue, settings=settings), Ledger(None, ""))

        async def produce(items: list[tuple[str, int]]) -> None:
            async with register(App(queue, settings=settings), Ledger(None, "")) as producer:
                task = producer.tasks[WORK]
                for start in range(0, len(items), BATCH):
                    batch = items[start : start + BATCH]
                    jobs = await task.enqueue_many(batch)
                    acked.update({job.id: key for job, (key, _) in zip(jobs, batch, strict=True)})

        async with (
            observer,
            Redis.from_url(server.url) as ledger,
            WorkerPool(
                tmp_path / "workers", env, APP_PATH, "--concurrency", str(CONCURRENCY)
            ) as pool,
        ):
            await pool.spawn_ready(WORKERS)

            async def all_ran() -> bool:
                return int(await ledger.hlen(ledger_key)) >= JOBS

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for p in range(PRODUCERS):
                    tg.start_soon(produce, work_items[p::PRODUCERS])
                kills = await kill_and_replace(
                    pool, random, every_s=KILL_EVERY_S, workers=WORKERS, done=all_ran,
                    deadline_s=RUN_DEADLINE_S,
                )  # fmt: skip
            await wait_for(
                lambda: quiescent(observer), VIS_S * 3 + 30, "C1 queue to drain after the kills"
            )
            elapsed_s = time.monotonic() - started

            final = await statuses(observer, acked)
            counts = await ledger_counts(ledger, ledger_key)
            entries = await entries_per_job(observer)
            reclaimed = await events(observer, "reclaimed")

    tally = Tally.of(acked, final, counts, attempted)
    killed_at = {w.pid: w.killed_ms for w in pool.workers if w.killed_ms is not None}
    latencies_ms = [
        int(e["ts"]) - killed_at[pid]
        for e in reclaimed
        if (pid := pid_of_consumer(e["from"])) in killed_at
    ]
    from_live = sum(1 for e in reclaimed if pid_of_consumer(e["from"]) not in killed_at)
    recovered = {e["job"] for e in reclaimed if final.get(e["job"]) == "succeeded"}
    multi_entry = sum(1 for jid in acked if entries[jid] != 1)
    startups = [w.ready_after_s for w in pool.workers if w.ready_after_s is not None]
    report(
        "C1",
        jobs=JOBS, acked=len(acked), ok=tally.ok, lost=len(tally.lost),
        duplicated=tally.duplicated, unexpected=tally.unexpected,
        duplicate_bound=CONCURRENCY * kills, kills=kills, recovered=len(recovered),
        reclaims=len(reclaimed), reclaims_from_live_workers=from_live,
        reclaim_ms_after_kill=percentiles(latencies_ms),
        reclaim_bound_ms=int((VIS_S + JANITOR_S + 1) * 1000),
        reclaim_idle_ms=percentiles([float(e["idle_ms"]) for e in reclaimed]),
        time_s=round(elapsed_s, 1), jobs_per_s=round(JOBS / elapsed_s, 1),
        multi_entry_jobs=multi_entry, worker_start_s=percentiles(startups),
        workers=WORKERS, concurrency=CONCURRENCY, vis_s=VIS_S, janitor_s=JANITOR_S,
    )  # fmt: skip
    assert len(acked) == JOBS
    assert tally.lost == [], f"lost {len(tally.lost)}: {tally.lost[:10]}"
    assert tally.unexpected == 0
    assert multi_entry == 0
    assert kills > 0
    assert tally.duplicated <= CONCURRENCY * kills, "more reruns than jobs the kills interrupted"
