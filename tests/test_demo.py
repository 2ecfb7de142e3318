"""The demo: strict priority order, every job accounted for, nothing left behind.

``run_demo`` is tested in-process against the session server; ``python -m
streamq demo`` as a child process on the embedded server (no URL configured),
as a newcomer would first run it. ``Timeline``, which splits the demo's time
into draining and waiting on retry backoff, is tested on a fake clock.
"""

from __future__ import annotations

import os

import pytest
import redis.asyncio

from streamq import embedded
from streamq.demo import PRIORITIES, Timeline, run_demo
from tests.apps.process import streamq_child, valkey_pids_serving

pytestmark = pytest.mark.anyio

DEMO_KEYS = "streamq:{demo-*"


async def demo_keys(redis_url: str) -> set[bytes]:
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        return {key async for key in client.scan_iter(match=DEMO_KEYS, count=1000)}


async def test_run_demo_reports_strict_priority_and_accounts_for_every_job(
    redis_url: str,
) -> None:
    """Every high job starts before any default one, and every default before any low.

    Ten jobs per priority include one with a planned failure (n == 7) in
    each: its first attempt fails, its one retry succeeds, so all 30 succeed,
    3 of them after a retry, and none fails. The wall time splits into the
    drain and the wait on retry backoff. The demo deletes its queue's keys at
    the end: no key of a demo queue is added to the server. The order depends
    on how fetches and outcomes interleave, so the demo runs three times and
    every run must report strict order.
    """
    before = await demo_keys(redis_url)
    for _ in range(3):
        report = await run_demo(jobs_per_priority=10, concurrency=4, redis_url=redis_url)
        assert report.enqueued == 10 * len(PRIORITIES)
        assert (report.succeeded, report.failed, report.retried, report.recovered) == (30, 0, 3, 3)
        assert report.ok
        assert report.strict_order, f"start order: {' '.join(report.start_order)}"
        assert set(report.positions()) == set(PRIORITIES)
        assert 0 <= report.backoff_wait_s < report.seconds
        assert report.drain_s + report.backoff_wait_s == pytest.approx(report.seconds)
        assert report.drain_jobs_per_s == pytest.approx(report.enqueued / report.drain_s)
        assert await demo_keys(redis_url) == before


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_timeline_counts_only_the_wait_for_retries_as_backoff() -> None:
    """Backoff wait: no handler runs, every job has started, and a retry is not due yet.

    Three jobs; A fails and will retry. The gap after A's first attempt, while
    B and C have not started, is part of the drain (the worker is fetching).
    The gap after C ends, when only A's retry is left, is backoff wait, until
    the retry starts. Without the "every job has started" rule the first gap
    would count too; without the "a retry is waiting" rule, the idle time
    after the last job.
    """
    clock = FakeClock()
    timeline = Timeline(jobs=3, clock=clock)
    timeline.attempt_started(first=True)  # A at 0
    clock.now = 1.0
    timeline.attempt_ended(will_retry=True)
    clock.now = 1.5  # nothing runs, B and C not started: fetching
    timeline.attempt_started(first=True)  # B
    timeline.attempt_started(first=True)  # C
    clock.now = 2.0
    timeline.attempt_ended(will_retry=False)
    clock.now = 3.0
    timeline.attempt_ended(will_retry=False)  # only A's retry is left
    assert timeline.backoff_wait_s == 0.0
    clock.now = 7.0
    timeline.attempt_started(first=False)  # A's retry, 4 s later
    clock.now = 8.0
    timeline.attempt_ended(will_retry=False)
    clock.now = 9.0  # idle after the last job: not a wait for retries
    assert timeline.backoff_wait_s == 4.0
    assert timeline.waiting_s() == 4.0


def test_timeline_counts_a_wait_still_going_on() -> None:
    """``waiting_s()`` includes a wait that has started and not yet ended."""
    clock = FakeClock()
    timeline = Timeline(jobs=1, clock=clock)
    timeline.attempt_started(first=True)
    clock.now = 1.0
    timeline.attempt_ended(will_retry=True)
    clock.now = 3.5
    assert timeline.waiting_s() == 2.5


async def test_demo_command_on_the_embedded_server_exits_clean() -> None:
    """``python -m streamq demo`` with no URL starts and uses the embedded server.

    It exits 0 and prints the summary with strict priority order "yes". The
    server keeps running for the user's next commands (a worker, a producer),
    and the demo says so and names the command that stops it, which leaves no
    valkey-server serving the data dir.
    """
    home = embedded.data_dir()
    socket = embedded.socket_path(home)
    env = {k: v for k, v in os.environ.items() if k != "STREAMQ_REDIS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    try:
        async with streamq_child(["demo", "--jobs", "10"], env) as child:
            code = await child.wait(timeout_s=60)
        assert code == 0, child.output()
        out = "\n".join(child.stdout)
        assert summary_value(out, "strict priority order") == "yes", out
        # The planned failures are retries that succeed, shown in the summary,
        # never as error (or warning) lines above the progress bars.
        assert summary_value(out, "after a planned failure and 1 retry") == "3", out
        assert summary_value(out, "failed") == "0", out
        for line in child.stdout + child.stderr:
            assert "job failed" not in line and "job retried" not in line, child.output()
            assert "error" not in line.lower(), child.output()
        assert " jobs/s in " in summary_value(out, "drain throughput"), out
        assert summary_value(out, "waiting on retry backoff").endswith(" s"), out
        assert summary_value(out, "total time").endswith(" s"), out
        assert socket.parent == home, "socket fell back to /tmp: the check below would miss it"
        (pid,) = valkey_pids_serving(home)
        assert f"embedded server (pid {pid}" in out and "`streamq server stop`" in out, out
        async with streamq_child(["server", "stop"], env) as stop:
            assert await stop.wait(timeout_s=30) == 0, stop.output()
        assert valkey_pids_serving(home) == []
    finally:
        embedded.Embedded(home).stop()


def summary_value(out: str, what: str) -> str:
    """The value cell of the summary row whose label starts with ``what``."""
    rows = [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in out.splitlines()
        if line.startswith("│")
    ]
    (value,) = [row[-1] for row in rows if row[0].startswith(what)]
    return value
