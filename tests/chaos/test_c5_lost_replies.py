"""C5: replies lost after the command ran; redis-py retries it; nothing doubles, nothing is lost.

Invariant 9. A proxy (``tests.chaos.proxy``) sits between the clients and
valkey and, seeded, drops the connection after valkey ran an ``EVALSHA`` of
the enqueue, complete or fetch script but before its reply reached the
client. redis-py reconnects and sends the same command again, so each of those
scripts runs twice for one call:

- enqueue (single and pipelined ``enqueue_many``): the second run must find the
  job and add nothing: exactly one stream entry per job id;
- complete: the second run must find the outcome recorded and change nothing:
  one ``succeeded`` event per job, no fencing refusals;
- fetch: the first run's messages were delivered to this consumer but never
  reached it; they sit pending with no heartbeat and must be reclaimed after
  the visibility timeout: none lost.

The worker and the producer run in this process, through the proxy; the
execution ledger is a Counter here.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from streamq import App, Worker
from streamq.scripts import Script
from tests.apps.chaos_app import WORK, Ledger, chaos_settings, register
from tests.chaos.conftest import Report
from tests.chaos.proxy import ReplyDropProxy
from tests.chaos.support import (
    entries_per_job,
    events,
    percentiles,
    producer_app,
    quiescent,
    rng,
    scaled,
    statuses,
    time_budget_s,
    valkey_server,
    wait_for,
)
from tests.conftest import queue_name

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

JOBS = scaled(5_000, 600)
BATCH = 20
DROP_PROBABILITY = 0.2
VIS_S = 1.0
JANITOR_S = 0.2
BLOCK_MS = 500
CONCURRENCY = 16
TARGETS = {name: Script.load(name).sha for name in ("enqueue", "complete", "fetch")}


def worker_app(queue: str, url: str, runs: Counter[str]) -> App:
    app = App(queue, settings=chaos_settings(url, VIS_S, JANITOR_S))

    @app.task(name=WORK)
    async def work(key: str, sleep_ms: int) -> int:
        await anyio.sleep(sleep_ms / 1000)
        runs[key] += 1
        return 0

    return app


@pytest.mark.timeout(time_budget_s(60, 120))
async def test_c5_lost_replies_are_retried_without_duplicates_or_loss(
    tmp_path: Path, report: Report
) -> None:
    random = rng("C5")
    queue = queue_name()
    runs: Counter[str] = Counter()
    acked: dict[str, str] = {}
    items = [(f"k{i}", random.randint(0, 20)) for i in range(JOBS)]

    async with valkey_server(tmp_path / "valkey") as server, anyio.create_task_group() as outer:
        assert server.port is not None
        proxy = ReplyDropProxy(server.port, TARGETS, drop_probability=DROP_PROBABILITY, rng=random)
        await outer.start(proxy.run)
        via_proxy = chaos_settings(proxy.url, VIS_S, JANITOR_S)
        consumer_app = worker_app(queue, proxy.url, runs)
        producer = register(App(queue, settings=via_proxy), Ledger(None, ""))
        observer = producer_app(server.url, queue, VIS_S, JANITOR_S)
        try:
            with capture_logs() as logs:
                async with consumer_app, producer, observer, anyio.create_task_group() as tg:
                    worker = Worker(consumer_app, concurrency=CONCURRENCY, block_ms=BLOCK_MS)
                    await tg.start(worker.run)
                    started = time.monotonic()
                    try:
                        task = producer.tasks[WORK]
                        for n, start in enumerate(range(0, JOBS, BATCH)):
                            batch = items[start : start + BATCH]
                            if n % 2:
                                jobs = await task.enqueue_many(batch)
                            else:
                                jobs = [await task.enqueue(*item) for item in batch]
                            acked.update({j.id: k for j, (k, _) in zip(jobs, batch, strict=True)})

                        async def all_succeeded() -> bool:
                            found = await statuses(observer, acked)
                            return all(s == "succeeded" for s in found.values())

                        await wait_for(all_succeeded, VIS_S * 4 + 30, "every job to succeed", 0.1)
                        await wait_for(lambda: quiescent(observer), 30, "C5 queue to drain")
                        elapsed_s = time.monotonic() - started
                    finally:
                        worker.stop(grace_s=5)
                    final = await statuses(observer, acked)
                    entries = await entries_per_job(observer)
                    succeeded = Counter(e["job"] for e in await events(observer, "succeeded"))
                    reclaimed = await events(observer, "reclaimed")
        finally:
            outer.cancel_scope.cancel()

    logged = Counter(str(record["event"]) for record in logs)
    lost = [jid for jid, status in final.items() if status != "succeeded"]
    keys = set(acked.values())
    report(
        "C5-lost-replies",
        jobs=JOBS, acked=len(acked), lost=len(lost),
        stream_entries=sum(entries.values()),
        multi_entry_jobs=sum(1 for jid in acked if entries[jid] != 1),
        succeeded_events_not_1=sum(1 for jid in acked if succeeded[jid] != 1),
        duplicated_runs=sum(1 for key in keys if runs[key] > 1),
        not_run=sum(1 for key in keys if runs[key] == 0),
        replies_seen=dict(proxy.seen), replies_dropped=dict(proxy.dropped),
        proxy_connections=proxy.connections,
        redelivered_after_lost_fetch=len(reclaimed),
        redelivery_idle_ms=percentiles([float(e["idle_ms"]) for e in reclaimed]),
        fenced_outcomes=logged["job lost ownership; its outcome was dropped"],
        unrecorded_outcomes=logged["job outcome not recorded; its message stays pending"],
        time_s=round(elapsed_s, 1), vis_s=VIS_S, janitor_s=JANITOR_S, block_ms=BLOCK_MS,
    )  # fmt: skip
    assert len(acked) == JOBS
    assert lost == []
    assert sum(entries.values()) == JOBS, "an enqueue retried after a lost reply added twice"
    assert all(succeeded[jid] == 1 for jid in acked), "an outcome was recorded twice"
    assert all(runs[key] >= 1 for key in keys)
    assert logged["job outcome not recorded; its message stays pending"] == 0
    for name in TARGETS:
        assert proxy.dropped[name] > 0, f"no {name} reply was dropped: the scenario did not run"


PARTITION_JOBS = scaled(20, 4)
PARTITION_JOB_S = 1.0
PARTITION_S = 3.5 * VIS_S
LOST_LOG = "job lost ownership; its outcome was dropped"
SUCCESS_LOG = "job succeeded"


def a_outcomes(logs: Sequence[Mapping[str, Any]], consumer: str) -> list[str]:
    """What worker ``consumer`` logged for each outcome it tried to record."""
    return [
        str(r["event"])
        for r in logs
        if r.get("worker") == consumer and r.get("event") in (LOST_LOG, SUCCESS_LOG)
    ]


def tagged_app(
    queue: str, url: str, tag: str, ran: list[tuple[str, str]], **settings: float
) -> App:
    app = App(queue, settings=chaos_settings(url, VIS_S, JANITOR_S).with_changes(**settings))

    @app.task(name=WORK)
    async def work(key: str, sleep_ms: int) -> str:
        await anyio.sleep(sleep_ms / 1000)
        ran.append((tag, key))
        return tag

    return app


@pytest.mark.timeout(time_budget_s(60, 60))
async def test_c5_partitioned_worker_is_fenced_and_loses_nothing(
    tmp_path: Path, report: Report
) -> None:
    """A partition longer than 3 x the visibility timeout: B takes over, A's late outcomes bounce.

    Worker A talks to valkey through the proxy and holds every job when the
    proxy goes silent (no RST: connections hang, as in a network partition).
    Worker B, connected directly, reclaims the jobs after the visibility
    timeout and runs them. When the partition heals, A's delayed heartbeats
    and outcomes reach valkey: all must be refused. Passes when every job
    ends succeeded with B's result, one ``succeeded`` event each, from B.
    """
    queue = queue_name()
    ran: list[tuple[str, str]] = []
    async with valkey_server(tmp_path / "valkey") as server, anyio.create_task_group() as outer:
        assert server.port is not None
        proxy = ReplyDropProxy(server.port, TARGETS, drop_probability=0.0, rng=rng("C5-part"))
        await outer.start(proxy.run)
        # A short socket timeout, so A's client notices the silence and retries.
        app_a = tagged_app(queue, proxy.url, "A", ran, socket_timeout_s=2.5)
        app_b = tagged_app(queue, server.url, "B", ran)
        try:
            with capture_logs() as logs:
                async with app_a, app_b, anyio.create_task_group() as tg:
                    worker_a = Worker(app_a, concurrency=PARTITION_JOBS)
                    worker_b = Worker(app_b, concurrency=PARTITION_JOBS)
                    await tg.start(worker_a.run)
                    try:
                        jobs = await app_b.tasks[WORK].enqueue_many(
                            [(f"p{i}", int(PARTITION_JOB_S * 1000)) for i in range(PARTITION_JOBS)]
                        )

                        async def all_running() -> bool:
                            found = await statuses(app_b, [j.id for j in jobs])
                            return all(s == "running" for s in found.values())

                        await wait_for(all_running, 15, "A to run every job")
                        proxy.blackhole()
                        partitioned = time.monotonic()
                        await tg.start(worker_b.run)
                        await anyio.sleep(PARTITION_S)  # the partition's length is the fault
                        proxy.heal()
                        healed_after_s = time.monotonic() - partitioned

                        async def settled() -> bool:
                            found = await statuses(app_b, [j.id for j in jobs])
                            return all(s == "succeeded" for s in found.values()) and len(
                                a_outcomes(logs, worker_a.consumer)
                            ) >= len(jobs)

                        await wait_for(settled, 40, "B to finish and A to try its outcomes", 0.1)
                    finally:
                        worker_a.stop(grace_s=2)
                        worker_b.stop(grace_s=2)
                    results = [await j.result(timeout=5) for j in jobs]
                    succeeded = await events(app_b, "succeeded")
                    reclaimed = await events(app_b, "reclaimed")
        finally:
            outer.cancel_scope.cancel()

    ids = {j.id for j in jobs}
    mine = [e for e in succeeded if e["job"] in ids]
    report(
        "C5-partition",
        jobs=PARTITION_JOBS, partition_s=round(healed_after_s, 1), vis_s=VIS_S,
        succeeded_with_b_result=sum(1 for r in results if r == "B"),
        succeeded_events=len(mine),
        reclaimed_by_b=sum(1 for e in reclaimed if e["job"] in ids),
        a_runs=sum(1 for tag, _ in ran if tag == "A"),
        a_refused_by_owner_check=a_outcomes(logs, worker_a.consumer).count(LOST_LOG),
        a_logged_success_after_b_recorded=a_outcomes(logs, worker_a.consumer).count(SUCCESS_LOG),
    )  # fmt: skip
    assert results == ["B"] * PARTITION_JOBS, "a partitioned worker's result was stored"
    assert len(mine) == PARTITION_JOBS
    assert {e["worker"] for e in mine} == {worker_b.consumer}
