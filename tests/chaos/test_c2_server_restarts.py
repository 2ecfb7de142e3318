"""C2: SIGKILL valkey and restart it from its AOF while producers and workers keep going.

Invariant 1 across a server crash: an enqueue that returned was written to the
AOF before Redis replied, so a restart replays it. Two producers (in this
process) and two worker processes run throughout; the server is SIGKILLed a
few times, left down for a moment and restarted from its AOF, under both
``appendfsync everysec`` and ``always``. Nobody restarts the workers or the
producers: they must reconnect by themselves (redis-py's retries, the
worker's retry loops). The ledger of acknowledged enqueues (job ids whose
enqueue returned) lives in this process; the execution ledger on a second
server that is never killed.

Passes when every acknowledged job still exists and ends ``succeeded`` (or
dead with a reason), no job id has two stream entries, and both worker
processes are still alive. One outage is longer than redis-py's retry budget:
enqueues then fail (not acknowledged, so not counted), and outcomes that
could not be written are left pending and reclaimed after the restart. A
process kill cannot tell ``always`` from ``everysec``: the kernel's page cache
survives it (see docs/reliability.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from redis.exceptions import RedisError

from streamq import App
from streamq.embedded import ValkeyServer
from tests.apps.chaos_app import (
    LEDGER_URL_ENV,
    WORK,
    Ledger,
    chaos_settings,
    register,
)
from tests.chaos.conftest import Report
from tests.chaos.support import (
    WorkerPool,
    entries_per_job,
    events,
    ledger_counts,
    percentiles,
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
JOBS = scaled(10_000, 1_000)
SERVER_KILLS = scaled(4, 3)
KILL_EVERY_S = 1.0
DOWN_S = (0.1, 0.8)
"""How long the server stays down after each SIGKILL: redis-py's retries ride this out."""
LONG_DOWN_S = 6.0
"""One outage outlasts redis-py's retry budget (8 retries, backoff capped at 1 s), so
enqueues are refused, outcomes go unrecorded and the workers' own retry loops run."""
PRODUCERS = 2
BATCH = 10
WORKERS = 2
CONCURRENCY = 16
VIS_S = 2.0
JANITOR_S = 0.5
JOB_MS = (5, 40)
FINAL = {"succeeded", "failed", "dead"}


async def restart_from_aof(server: ValkeyServer, down_s: float) -> float:
    """SIGKILL, stay down ``down_s``, start again; returns the start (AOF load) time in s."""
    await anyio.to_thread.run_sync(server.kill)
    await anyio.sleep(down_s)  # the outage itself, not a wait for a condition
    began = time.monotonic()
    await anyio.to_thread.run_sync(server.start)
    return time.monotonic() - began


@pytest.mark.timeout(time_budget_s(90, 200))
@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
async def test_c2_valkey_sigkill_and_aof_restart_loses_no_acknowledged_enqueue(
    tmp_path: Path, report: Report, appendfsync: str
) -> None:
    random = rng(f"C2-{appendfsync}")
    queue = queue_name()
    ledger_key = queue_ledger_key(queue)
    work_items = [(f"k{i}", random.randint(*JOB_MS)) for i in range(JOBS)]
    acked: dict[str, str] = {}  # job id -> ledger key, once enqueue returned
    refused_calls = 0
    produce_span_s = SERVER_KILLS * KILL_EVERY_S + LONG_DOWN_S
    batch_pause_s = produce_span_s / (JOBS / PRODUCERS / BATCH)

    async with (
        valkey_server(tmp_path / "ledger") as ledger_server,
        valkey_server(tmp_path / "valkey", appendfsync=appendfsync) as server,
    ):
        env = worker_env(server.url, queue, VIS_S, JANITOR_S, **{LEDGER_URL_ENV: ledger_server.url})
        settings = chaos_settings(server.url, VIS_S, JANITOR_S)
        observer = register(App(queue, settings=settings), Ledger(None, ""))

        async def produce(items: list[tuple[str, int]]) -> None:
            nonlocal refused_calls
            async with register(App(queue, settings=settings), Ledger(None, "")) as producer:
                task = producer.tasks[WORK]
                for start in range(0, len(items), BATCH):
                    batch = items[start : start + BATCH]
                    try:
                        jobs = await task.enqueue_many(batch)
                    except RedisError:
                        refused_calls += 1  # not acknowledged: may or may not exist
                    else:
                        acked.update(
                            {job.id: key for job, (key, _) in zip(jobs, batch, strict=True)}
                        )
                    await anyio.sleep(batch_pause_s)  # pacing, so the kills hit a running load

        restarts_s: list[float] = []
        async with (
            observer,
            WorkerPool(
                tmp_path / "workers", env, APP_PATH, "--concurrency", str(CONCURRENCY)
            ) as pool,
        ):
            workers = await pool.spawn_ready(WORKERS)
            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for p in range(PRODUCERS):
                    tg.start_soon(produce, work_items[p::PRODUCERS])
                for kill in range(SERVER_KILLS):
                    await anyio.sleep(KILL_EVERY_S * random.uniform(0.7, 1.3))
                    down_s = LONG_DOWN_S if kill == 1 else random.uniform(*DOWN_S)
                    restarts_s.append(await restart_from_aof(server, down_s))

            async def all_final() -> bool:
                found = await statuses(observer, acked)
                return all(status in FINAL for status in found.values())

            await wait_for(all_final, VIS_S * 4 + 60, "every acknowledged job to finish", 0.25)
            await wait_for(lambda: quiescent(observer), 30, "C2 queue to drain")
            elapsed_s = time.monotonic() - started
            alive = [w.process.returncode is None for w in workers]

            final = await statuses(observer, acked)
            entries = await entries_per_job(observer)
            reclaimed = await events(observer, "reclaimed")
            dead = await events(observer, "dead", "failed")
            counts = await ledger_counts(ledger_server.url, ledger_key)

    lost = [jid for jid, status in final.items() if status is None]
    unfinished = [jid for jid, status in final.items() if status not in FINAL]
    not_succeeded = [jid for jid, status in final.items() if status != "succeeded"]
    acked_keys = set(acked.values())
    report(
        f"C2-{appendfsync}",
        jobs=JOBS, acked=len(acked), refused_enqueue_calls=refused_calls,
        unacked_but_ran=sum(1 for key in counts if key not in acked_keys),
        lost_acknowledged=len(lost), unfinished=len(unfinished),
        not_succeeded=len(not_succeeded), dead_events=len(dead),
        duplicate_entries=sum(1 for jid in acked if entries[jid] > 1),
        duplicated_runs=sum(1 for key in acked_keys if counts.get(key, 0) > 1),
        recovered=len({e["job"] for e in reclaimed if final.get(e["job"]) == "succeeded"}),
        server_kills=SERVER_KILLS, restart_s=percentiles(restarts_s),
        workers_alive=sum(alive), time_s=round(elapsed_s, 1),
    )  # fmt: skip
    assert lost == [], f"acknowledged enqueues lost: {lost[:10]}"
    assert unfinished == []
    assert all(e.get("error") or e.get("error_type") for e in dead), dead[:5]
    assert all(entries[jid] == 1 for jid in acked), "a job id has two stream entries"
    assert all(alive), "a worker died instead of reconnecting"
    assert len(acked) > JOBS // 2, "most enqueues should succeed through redis-py's retries"
