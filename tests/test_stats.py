"""Queue statistics read back from a real server: depth, lag, PEL, consumers, throughput."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import cast

import anyio
import pytest

from streamq import App, JobStatus, Retry
from streamq.keys import GROUP
from streamq.stats import collect
from tests.apps.process import streamq_child
from tests.apps.slow import ADD, register
from tests.conftest import bound_lost_jobs, queue_name, running_worker, subprocess_env

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


async def test_a_queue_never_used_reads_as_zeros_and_creates_nothing(app: App) -> None:
    """No stream, group or events yet: zeros everywhere, not an error (and no keys made)."""
    stats = await collect(app)
    assert [p.priority for p in stats.priorities] == ["high", "default", "low"]
    for prio in stats.priorities:
        assert (prio.length, prio.lag, prio.pending) == (0, 0, 0)
        assert prio.oldest_pending_age_s is None and prio.consumers == ()
    assert (stats.delayed, stats.dlq, stats.throughput.finished) == (0, 0, 0)
    assert stats.throughput.window_s == pytest.approx(60, abs=5)
    redis = await app.redis()
    assert [key async for key in redis.scan_iter(match=app.keys.pattern())] == []


async def test_snapshot_shows_waiting_running_delayed_dead_and_outcomes(app: App) -> None:
    """Given jobs in every state, each number comes from where Redis keeps it.

    Finished work (2 succeeded, 1 retried then failed, 1 failed at once) shows
    in the throughput and the DLQ; then one job runs (pending, with its
    consumer), two wait behind it unread (lag) and one is scheduled (delayed).
    """
    release = anyio.Event()
    started = anyio.Event()
    tried: list[int] = []

    @app.task(name="ok")
    async def ok() -> None:
        return None

    @app.task(name="retry_then_fail", max_retries=1)
    async def retry_then_fail() -> None:
        tried.append(1)
        if len(tried) == 1:
            raise Retry(delay=0)  # back to the stream at once: a 'retried' event
        raise ValueError("second attempt fails too")

    @app.task(name="fail", max_retries=0)
    async def fail() -> None:
        raise ValueError("no")

    @app.task(name="block", priority="high")
    async def block() -> None:
        started.set()
        await release.wait()

    done = [await ok.enqueue(), await ok.enqueue(), await retry_then_fail.enqueue()]
    done.append(await fail.enqueue())
    async with running_worker(app, concurrency=1) as worker:
        statuses = [await job.wait(timeout=10) for job in done]
        assert statuses == [JobStatus.SUCCEEDED] * 2 + [JobStatus.FAILED] * 2

        running = await block.enqueue()
        with anyio.fail_after(10):
            await started.wait()
        # The one slot is busy: these stay in the stream, undelivered.
        waiting = [await ok.enqueue(), await ok.enqueue()]
        scheduled = await ok.enqueue_in(3600)
        stats = await collect(app)
        release.set()
        assert await running.wait(timeout=10) == JobStatus.SUCCEEDED
        for job in waiting:
            assert await job.wait(timeout=10) == JobStatus.SUCCEEDED

    high, default, low = stats.priorities
    assert (high.pending, high.lag, high.length) == (1, 0, 1)
    assert high.oldest_pending_age_s is not None and 0 <= high.oldest_pending_age_s < 10
    assert [(c.name, c.pending) for c in high.consumers] == [(worker.consumer, 1)]
    assert (default.pending, default.lag, default.lag_estimated) == (0, 2, False)
    assert default.length == 7  # 4 finished + 1 retry re-added + 2 waiting: history stays
    assert default.oldest_pending_age_s is None
    assert (low.length, low.pending) == (0, 0)
    assert [(c.name, c.pending) for c in stats.consumers] == [(worker.consumer, 1)]
    assert stats.consumers[0].idle_ms < 10_000
    assert (stats.delayed, stats.dlq, stats.pending) == (1, 2, 1)
    t = stats.throughput
    assert (t.succeeded, t.failed, t.retried, t.dead) == (2, 2, 1, 0)
    assert t.per_s == pytest.approx(4 / t.window_s)
    record = stats.to_dict()
    assert record["throughput"]["per_s"] == t.per_s and record["pending"] == 1
    assert await scheduled.status() == JobStatus.SCHEDULED


async def test_lag_the_server_cannot_tell_is_estimated_and_labelled(app: App) -> None:
    """XINFO GROUPS gives no lag once an entry after the group's position is deleted.

    Then stats falls back to entries added minus entries read (labelled an
    estimate: it counts the deleted entry too), and a group that has read
    nothing yet has exactly the stream's length to go.
    """

    @app.task(name="add", priority="low")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="later")
    async def later() -> None:
        return None

    for i in range(3):
        await add.enqueue(i, i)
        await later.enqueue()
    redis = await app.redis()
    low, default = app.keys.stream("low"), app.keys.stream("default")
    await redis.xreadgroup(GROUP, "reader", {low: ">"}, count=1)
    for stream in (low, default):
        ((last_id, _fields),) = cast(
            list[tuple[bytes, object]], await redis.xrevrange(stream, count=1)
        )
        await redis.xdel(stream, last_id)
        (group,) = await redis.xinfo_groups(stream)
        assert group["lag"] is None  # the precondition: the server cannot tell

    stats = await collect(app)
    by_name = {p.priority: p for p in stats.priorities}
    assert (by_name["low"].lag, by_name["low"].lag_estimated) == (2, True)  # truly 1
    assert (by_name["default"].lag, by_name["default"].lag_estimated) == (2, False)
    assert by_name["low"].pending == 1
    # Their jobs' messages were deleted: the janitor's lost-job duty bounds the hashes.
    assert len(await bound_lost_jobs(app)) == 2


def streamq_stats(url: str, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamq", "stats", "tests.apps.slow:app", *args],
        cwd=ROOT, env=subprocess_env(url, STREAMQ_TEST_QUEUE=queue),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_stats_cli_json_table_watch_and_ctrl_c(redis_url: str) -> None:
    """``streamq stats``: one JSON object, a table, N snapshots, and Ctrl-C ends --watch."""
    name = queue_name()
    app = register(App(name, redis_url=redis_url))
    async with app:
        jobs = [await app.enqueue(ADD, i, i) for i in range(3)]

        as_json = streamq_stats(redis_url, name, "--json")
        assert as_json.returncode == 0, as_json.stderr
        (line,) = as_json.stdout.splitlines()
        record = json.loads(line)
        assert record["queue"] == name
        default = next(p for p in record["priorities"] if p["priority"] == "default")
        assert (default["length"], default["lag"], default["pending"]) == (3, 3, 0)

        table = streamq_stats(redis_url, name, "--watch", "--interval", "0.01", "--count", "2")
        assert table.returncode == 0, table.stderr
        assert table.stdout.count(f"queue {name} at") == 2  # piped: one table per refresh
        assert "oldest pending" in table.stdout and "DLQ 0" in table.stdout

        env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=name)
        args = ["stats", "tests.apps.slow:app", "--watch", "--json", "--interval", "0.05"]
        async with streamq_child(args, env) as child:
            await child.wait_for_line(
                lambda line: line.startswith("{"), timeout_s=20, description="a snapshot"
            )
            child.signal(signal.SIGINT)
            assert await child.wait(timeout_s=20) == 0, child.output()
        assert all(r["queue"] == name for r in child.records())

        async with running_worker(app):  # leave nothing queued on the shared server
            assert [await job.result(timeout=10) for job in jobs] == [0, 2, 4]
        redis = await app.redis()
        async for key in redis.scan_iter(match=app.keys.pattern()):
            await redis.delete(key)
