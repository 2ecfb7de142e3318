"""The demo: a few hundred jobs over three priorities, drained by one worker.

Everything runs in one process against the configured server (by default the
embedded one). Jobs are enqueued first, then the worker starts, so the start
order shows strict priority: every high job starts before any default job,
and every default job before any low one. A few jobs have a planned failure:
their first attempt raises, their retry succeeds. The time spent only waiting
for those retries to come due (backoff, then the janitor's promotion) is
reported apart from the drain, so the drain's throughput is not diluted by
it. The demo's keys are deleted at the end.
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
    """Retries run (attempts after the first)."""
    recovered: int = 0
    """Jobs that succeeded on a retry after their planned failure."""
    seconds: float = 0.0
    """Wall time from the worker's start to the last result."""
    backoff_wait_s: float = 0.0
    """Of ``seconds``, the time only waiting for retries to come due (see ``Timeline``)."""
    promote_interval_s: float = 0.0
    """How often the janitor promotes due retries into their streams."""
    start_order: list[str] = field(default_factory=list)
    """Priority of each job's first attempt, in start order (retries re-queue at the tail)."""
    starts: int = 0

    @property
    def drain_s(self) -> float:
        """The time the worker had jobs to run: the wall time less the backoff wait."""
        return self.seconds - self.backoff_wait_s

    @property
    def drain_jobs_per_s(self) -> float:
        return self.enqueued / self.drain_s if self.drain_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Every job succeeded (planned failures included, on their retry), in strict order."""
        return self.strict_order and self.succeeded == self.enqueued and not self.failed

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


class Timeline:
    """Splits the demo's wall time into the drain and the wait for retries' backoff.

    The worker only waits on backoff while no handler runs, every job has
    started its first attempt, and a failed attempt's retry has not started:
    nothing is left to run until a retry comes due. Any other gap (fetching
    the next batch, recording outcomes) is part of the drain. The handler
    reports each attempt's start and end; ``clock`` is for tests.
    """

    def __init__(self, jobs: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.backoff_wait_s = 0.0
        self._clock = clock
        self._unstarted = jobs
        self._running = 0
        self._retries_due = 0
        self._waiting_since: float | None = None

    def attempt_started(self, *, first: bool) -> None:
        if self._waiting_since is not None:
            self.backoff_wait_s += self._clock() - self._waiting_since
            self._waiting_since = None
        if first:
            self._unstarted -= 1
        else:
            self._retries_due -= 1
        self._running += 1

    def attempt_ended(self, *, will_retry: bool) -> None:
        self._running -= 1
        if will_retry:
            self._retries_due += 1
        if not self._running and not self._unstarted and self._retries_due:
            self._waiting_since = self._clock()

    def waiting_s(self) -> float:
        """The backoff wait so far, including one still going on."""
        if self._waiting_since is None:
            return self.backoff_wait_s
        return self.backoff_wait_s + self._clock() - self._waiting_since


async def run_demo(
    *,
    jobs_per_priority: int = 100,
    concurrency: int = 20,
    redis_url: str | None = None,
    on_enqueued: Callable[[int], None] = lambda n: None,
    on_done: Callable[[int], None] = lambda n: None,
) -> DemoReport:
    app = App(f"demo-{secrets.token_hex(4)}", redis_url=redis_url, result_ttl=600)
    report = DemoReport(promote_interval_s=app.settings.janitor_interval_s)
    timeline = Timeline(jobs_per_priority * len(PRIORITIES))

    first_attempts: set[tuple[str, int]] = set()

    @app.task(name="demo.work", max_retries=1, backoff_base=0.01)
    async def work(n: int, priority: str) -> int:
        # First attempts in start order prove strict priority; a retry is a
        # new message at the tail of its stream, so it is only counted.
        report.starts += 1
        first = (priority, n) not in first_attempts
        if first:
            first_attempts.add((priority, n))
            report.start_order.append(priority)
        timeline.attempt_started(first=first)
        await anyio.sleep(0.001)
        planned_failure = first and n % 50 == 7
        timeline.attempt_ended(will_retry=planned_failure)
        if planned_failure:
            raise ValueError(
                f"job {n}: a planned failure of its first attempt (its retry succeeds)"
            )
        if not first:
            report.recovered += 1
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
        report.backoff_wait_s = timeline.waiting_s()
        on_done(len(report.start_order))
        redis = await app.node_redis()
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
