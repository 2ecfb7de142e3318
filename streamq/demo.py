"""The demo: a few hundred jobs over three priorities, drained by one worker.

Everything runs in one process against the configured server (by default the
embedded one). Jobs are enqueued first, then the worker starts, so the start
order shows strict priority: every high job starts before any default job,
and every default job before any low one. The demo's keys are deleted at the end.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from streamq.app import App
from streamq.errors import JobFailed
from streamq.worker import Worker

PRIORITIES = ("high", "default", "low")


@dataclass
class DemoReport:
    enqueued: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0
    start_order: list[str] = field(default_factory=list)
    """Priority of each job's first attempt, in start order (retries re-queue at the tail)."""
    starts: int = 0

    @property
    def jobs_per_s(self) -> float:
        return self.enqueued / self.seconds if self.seconds else 0.0

    def positions(self) -> dict[str, tuple[int, int]]:
        """First and last start position (1-based) of each priority's jobs."""
        spans: dict[str, tuple[int, int]] = {}
        for i, prio in enumerate(self.start_order, 1):
            first, _ = spans.get(prio, (i, i))
            spans[prio] = (first, i)
        return spans

    @property
    def strict_order(self) -> bool:
        ranks = [PRIORITIES.index(p) for p in self.start_order]
        return ranks == sorted(ranks)


async def run_demo(
    *,
    jobs_per_priority: int = 100,
    concurrency: int = 20,
    redis_url: str | None = None,
    on_enqueued: Callable[[int], None] = lambda n: None,
    on_done: Callable[[int], None] = lambda n: None,
) -> DemoReport:
    app = App(f"demo-{secrets.token_hex(4)}", redis_url=redis_url, result_ttl=600)
    report = DemoReport()

    first_attempts: set[tuple[str, int]] = set()

    @app.task(name="demo.work", max_retries=1, backoff_base=0.01)
    async def work(n: int, priority: str) -> int:
        # First attempts in start order prove strict priority; a retry is a
        # new message at the tail of its stream, so it is only counted.
        report.starts += 1
        if (priority, n) not in first_attempts:
            first_attempts.add((priority, n))
            report.start_order.append(priority)
        await anyio.sleep(0.001)
        if n % 50 == 7:
            raise ValueError(f"job {n} fails on purpose (shows failure handling)")
        return n * n

    async with app:
        jobs = []
        for prio in PRIORITIES:
            calls = [(i, prio) for i in range(jobs_per_priority)]
            for start in range(0, len(calls), 50):
                jobs += await work.with_options(priority=prio).enqueue_many(
                    calls[start : start + 50]
                )
                on_enqueued(len(jobs))
        report.enqueued = len(jobs)
        worker = Worker(app, concurrency=concurrency, burst=True)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)

            async def progress() -> None:
                while True:
                    on_done(len(report.start_order))
                    await anyio.sleep(0.05)

            tg.start_soon(progress)
            await _wait_finished(jobs, report)
            tg.cancel_scope.cancel()
        report.seconds = time.perf_counter() - started
        on_done(len(report.start_order))
        redis = await app.redis()
        report.retried = report.starts - report.enqueued
        async for key in redis.scan_iter(match=app.keys.pattern(), count=1000):
            await redis.delete(key)
    return report


async def _wait_finished(jobs: list, report: DemoReport) -> None:  # type: ignore[type-arg]
    outcomes: Counter[str] = Counter()
    for job in jobs:
        try:
            await job.result(timeout=60)
            outcomes["ok"] += 1
        except JobFailed:
            outcomes["failed"] += 1
    report.succeeded, report.failed = outcomes["ok"], outcomes["failed"]
