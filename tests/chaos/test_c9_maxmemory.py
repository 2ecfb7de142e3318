"""C9: the server hits ``maxmemory`` mid-run: enqueue is refused whole, nothing accepted is lost.

With ``maxmemory-policy noeviction`` (what streamq's embedded server uses)
Redis refuses writes once full instead of evicting keys: evicting would drop
jobs silently. A worker runs while one producer enqueues 2 KB jobs, each with
a known job id, until the server refuses one. Redis checks memory at a
script's first write; enqueue.lua's first write is its XADD (or ZADD), so a
refused enqueue must leave nothing behind: no job hash, no stream entry, no
event. streamq surfaces Redis's own error, ``redis.exceptions.OutOfMemoryError``
(a ``ResponseError``), not a streamq ``EnqueueError``.

Passes when every refused enqueue wrote nothing, every accepted job still
ends ``succeeded`` (the running worker keeps completing jobs at the limit),
and enqueue works again once memory is available.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
from redis.exceptions import OutOfMemoryError, RedisError

from streamq import App, Worker
from tests.apps.chaos_app import WORK, chaos_settings
from tests.chaos.conftest import Report
from tests.chaos.support import (
    entries_per_job,
    events,
    quiescent,
    scaled,
    statuses,
    valkey_server,
    wait_for,
)
from tests.conftest import queue_name

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

MAXMEMORY = "6mb"
PAYLOAD = "x" * 2048
REFUSED_TRIES = scaled(200, 20)
"""Further enqueues tried while the server is full, each one must write nothing."""
MAX_ENQUEUES = 50_000
OVER_LIMIT_BYTES = 64 * 1024


def app_with_task(queue: str, url: str, runs: Counter[str]) -> App:
    app = App(queue, settings=chaos_settings(url, 2.0, 0.5))

    @app.task(name=WORK)
    async def work(key: str, payload: str) -> int:
        runs[key] += 1
        return len(payload)

    return app


async def test_c9_maxmemory_refuses_enqueues_whole_and_loses_nothing(
    tmp_path: Path, report: Report
) -> None:
    runs: Counter[str] = Counter()
    acked: list[str] = []
    refused: dict[str, str] = {}
    async with valkey_server(tmp_path / "valkey", extra_args=["--maxmemory", MAXMEMORY]) as server:
        app = app_with_task(queue_name(), server.url, runs)
        async with app, anyio.create_task_group() as tg:
            worker = Worker(app, concurrency=16)
            await tg.start(worker.run)
            try:
                task = app.tasks[WORK]
                started = time.monotonic()
                for n in range(MAX_ENQUEUES):
                    jid = f"j{n}"
                    try:
                        await task.with_options(job_id=jid).enqueue(jid, PAYLOAD)
                    except RedisError as exc:
                        refused[jid] = type(exc).__name__
                        break
                    acked.append(jid)
                fill_s = time.monotonic() - started
                for n in range(len(acked) + 1, len(acked) + 1 + REFUSED_TRIES):
                    jid = f"j{n}"
                    try:
                        await task.with_options(job_id=jid).enqueue(jid, PAYLOAD)
                    except RedisError as exc:
                        refused[jid] = type(exc).__name__
                    else:
                        acked.append(jid)  # memory freed meanwhile (it should not be)

                async def all_succeeded() -> bool:
                    found = await statuses(app, acked)
                    return all(s == "succeeded" for s in found.values())

                await wait_for(all_succeeded, 60, "every accepted job to succeed at maxmemory")
                at_limit_ok = len(acked)
                redis = await app.redis()
                await redis.config_set("maxmemory", "0")
                after = await task.enqueue("after", PAYLOAD)
                await wait_for(lambda: quiescent(app), 30, "C9 queue to drain")
                after_status = await after.status()
                final = await statuses(app, [*acked, *refused])
                entries = await entries_per_job(app)
                enqueued = Counter(e["job"] for e in await events(app, "enqueued"))
            finally:
                worker.stop(grace_s=5)

    written_when_refused = [
        jid for jid in refused if final[jid] is not None or entries[jid] or enqueued[jid]
    ]
    report(
        "C9",
        maxmemory=MAXMEMORY, accepted=len(acked), refused=len(refused),
        refused_error_types=sorted(set(refused.values())), fill_s=round(fill_s, 1),
        written_when_refused=len(written_when_refused),
        lost=sum(1 for jid in acked if final[jid] != "succeeded"),
        succeeded_at_limit=at_limit_ok, duplicated_runs=sum(1 for v in runs.values() if v > 1),
        enqueue_after_memory_freed=str(after_status),
    )  # fmt: skip
    assert refused, "the server never reached maxmemory"
    assert set(refused.values()) == {OutOfMemoryError.__name__}
    assert written_when_refused == []
    assert all(final[jid] == "succeeded" for jid in acked)
    assert all(entries[jid] == 1 for jid in acked)
    assert after_status == "succeeded"


async def test_c9_a_worker_started_while_the_server_is_full_drains_the_queue(
    tmp_path: Path, report: Report
) -> None:
    """A worker (re)started during a memory incident must still run the accepted jobs.

    Workers get restarted during incidents (a deploy, a crash loop, C1's
    replacements). Jobs are enqueued until the server refuses one, with no
    worker running, and the limit is lowered 64 KiB under the memory in use;
    then a worker starts in burst mode: it must start and finish every
    accepted job. Regression test: before commit e22727c the worker's
    ``XGROUP CREATE`` (refused outright at the limit, even for an existing
    group) killed it at start, with 0 jobs run.
    """
    runs: Counter[str] = Counter()
    acked: list[str] = []
    async with valkey_server(tmp_path / "valkey", extra_args=["--maxmemory", MAXMEMORY]) as server:
        app = app_with_task(queue_name(), server.url, runs)
        async with app:
            task = app.tasks[WORK]
            for n in range(MAX_ENQUEUES):
                try:
                    await task.enqueue(f"k{n}", PAYLOAD)
                except OutOfMemoryError:
                    break
                acked.append(f"k{n}")
            # Right at the limit, memory hovers (a refused command's buffers are
            # freed again): put the server firmly over it, as in an incident.
            redis = await app.redis()
            used = int((await redis.info("memory"))["used_memory"])
            await redis.config_set("maxmemory", str(used - OVER_LIMIT_BYTES))
            error: str | None = None
            try:
                with anyio.fail_after(60):
                    await Worker(app, concurrency=16, burst=True).run()
            except RedisError as exc:
                error = f"{type(exc).__name__}: {exc}"
            report(
                "C9-worker-start-at-limit",
                accepted=len(acked), ran=len(runs), worker_error=error,
            )  # fmt: skip
    assert error is None, f"the worker could not start at maxmemory: {error}"
    assert sorted(runs) == sorted(acked)
