"""C7: history trimmed every 0.2 s with retention 0 never takes a pending or unread job.

Invariant 2. Workers run the janitor with ``STREAMQ_RETENTION=0`` and a trim
every 0.2 s, so every acked entry is trimmed almost at once, while slow jobs
keep entries pending and a backlog keeps entries unread; a worker is SIGKILLed
about every 1.5 s so pending entries of dead workers must be reclaimed after
trims went past them. A pending entry whose message was trimmed has nothing
left to run: the reclaim script moves it to the DLQ ("message deleted or
trimmed while pending") and XAUTOCLAIM would report it among its deleted ids.

Passes when the DLQ stays empty (deleted ids 0), every accepted job ends
``succeeded``, and the trim did run (the stream ends far shorter than the
number of jobs).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.apps.chaos_app import (
    TRIM_ENV,
    WORK,
)
from tests.chaos.conftest import Report
from tests.chaos.support import (
    Tally,
    WorkerPool,
    kill_and_replace,
    ledger_counts,
    producer_app,
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
JOBS = scaled(3_000, 400)
WORKERS = 2
CONCURRENCY = 8
VIS_S = 1.0
JANITOR_S = 0.2
TRIM_S = 0.2
KILL_EVERY_S = 1.5
JOB_MS = (100, 400)


@pytest.mark.timeout(time_budget_s(90, 200))
async def test_c7_trimming_with_retention_zero_never_drops_pending_work(
    tmp_path: Path, report: Report
) -> None:
    random = rng("C7")
    queue = queue_name()
    ledger_key = queue_ledger_key(queue)
    items = [(f"k{i}", random.randint(*JOB_MS)) for i in range(JOBS)]
    async with valkey_server(tmp_path / "valkey") as server:
        env = worker_env(
            server.url,
            queue,
            VIS_S,
            JANITOR_S,
            **{TRIM_ENV: str(TRIM_S), "STREAMQ_RETENTION": "0"},
        )
        app = producer_app(server.url, queue, VIS_S, JANITOR_S)
        async with (
            app,
            Redis.from_url(server.url) as ledger,
            WorkerPool(
                tmp_path / "workers", env, APP_PATH, "--concurrency", str(CONCURRENCY)
            ) as pool,
        ):
            await pool.spawn_ready(WORKERS)
            started = time.monotonic()
            jobs = await app.tasks[WORK].enqueue_many(items)
            acked = {job.id: key for job, (key, _) in zip(jobs, items, strict=True)}

            async def all_ran() -> bool:
                return int(await ledger.hlen(ledger_key)) >= JOBS

            kills = await kill_and_replace(
                pool, random, every_s=KILL_EVERY_S, workers=WORKERS, done=all_ran,
                deadline_s=time_budget_s(60, 150),
            )  # fmt: skip
            await wait_for(lambda: quiescent(app), VIS_S * 3 + 30, "C7 queue to drain")
            elapsed_s = time.monotonic() - started
            redis = await app.redis()
            dlq = int(await redis.xlen(app.keys.dlq))
            stream_len = int(await redis.xlen(app.keys.stream(app.tasks[WORK].options.priority)))
            final = await statuses(app, acked)
            counts = await ledger_counts(ledger, ledger_key)
            trim_logs = 0
            for w in pool.workers:
                trim_logs += sum(
                    1 for r in await w.records() if r.get("event") == "trimmed history"
                )

    tally = Tally.of(acked, final, counts, set(acked.values()))
    report(
        "C7",
        jobs=JOBS, lost=len(tally.lost), duplicated=tally.duplicated, kills=kills,
        dlq_entries=dlq, stream_len_at_end=stream_len, trim_passes_logged=trim_logs,
        time_s=round(elapsed_s, 1), trim_s=TRIM_S, retention_s=0,
    )  # fmt: skip
    assert dlq == 0, "a pending entry was trimmed (reclaim found its message gone)"
    assert tally.lost == []
    assert stream_len < JOBS // 2, "the janitor did not trim"
    assert kills > 0
