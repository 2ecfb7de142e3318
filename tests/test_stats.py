"""Queue statistics read back from a real server: depth, lag, PEL, consumers, throughput."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import cast

import anyio
import pytest
from rich.console import Console

from streamq import App, JobStatus, Retry, Settings
from streamq.cli.stats import render
from streamq.janitor import Janitor
from streamq.keys import GROUP
from streamq.stats import QueueStats, collect
from tests.apps.process import streamq_child
from tests.apps.slow import ADD, register
from tests.conftest import (
    bound_lost_jobs,
    drop_queue,
    queue_name,
    running_worker,
    subprocess_env,
)
from tests.history import fill_history, user_without_memory

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
        history = {s["name"]: s for s in record["history"]["streams"]}
        assert history["default"]["length"] == 3 and history["events"]["length"] == 3
        assert record["history"]["warnings"] == []

        table = streamq_stats(redis_url, name, "--watch", "--interval", "0.01", "--count", "2")
        assert table.returncode == 0, table.stderr
        assert table.stdout.count(f"queue {name} at") == 2  # piped: one table per refresh
        assert "oldest pending" in table.stdout and "DLQ 0" in table.stdout
        assert table.stdout.count("reaches back") == 2  # the history table, each time

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


def as_text(stats: QueueStats) -> str:
    """What ``streamq stats`` prints for this snapshot, as plain text."""
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(render(stats))
    return console.export_text()


async def test_history_shows_each_streams_entries_reach_and_memory(app: App) -> None:
    """Each history stream (every priority stream, the events stream, the DLQ) shows
    its length, when its oldest entry was added and how long ago (how far back the
    history reaches), and an estimate of its memory. An empty stream reaches nowhere
    and takes nothing. The default settings cut nothing short: no warning."""

    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    for i in range(3):
        await add.enqueue(i, i)
    redis = await app.redis()
    await redis.xadd(app.keys.dlq, {"job": "gone", "reason": "for the test"})

    stats = await collect(app)
    history = stats.history
    by_name = {h.name: h for h in history.streams}
    assert list(by_name) == ["high", "default", "low", "events", "dlq"]
    assert [h.kind for h in history.streams] == ["priority"] * 3 + ["events", "dlq"]
    assert [h.stream for h in history.streams] == [
        *app.streams, app.keys.events, app.keys.dlq
    ]  # fmt: skip
    for name, length in (("default", 3), ("events", 3), ("dlq", 1)):
        entry = by_name[name]
        ((first_id, _fields),) = await redis.xrange(entry.stream, count=1)
        first_ms = int(first_id.decode().split("-")[0])
        assert (entry.length, entry.oldest_ms) == (length, first_ms), entry
        assert entry.reach_s == (stats.server_time_ms - first_ms) / 1000
        assert entry.memory_bytes is not None and entry.memory_bytes > 0
    for name in ("high", "low"):
        assert by_name[name].length == 0 and by_name[name].memory_bytes == 0
        assert by_name[name].oldest_ms is None and by_name[name].reach_s is None
    assert by_name["events"].cap == 100_000 or by_name["events"].cap is None
    assert by_name["dlq"].cap is None and by_name["dlq"].retention_s is None
    assert history.warnings == ()
    assert history.memory_bytes == sum(h.memory_bytes or 0 for h in history.streams)
    assert history.retained_jobs == 3
    assert history.bytes_per_retained_job == history.memory_bytes / 3

    record = stats.to_dict()["history"]
    assert [s["name"] for s in record["streams"]] == list(by_name)
    assert record["streams"][1]["length"] == 3 and record["streams"][1]["reach_s"] >= 0
    assert record["warnings"] == [] and record["bytes_per_retained_job"] > 0
    text = as_text(stats)
    assert "reaches back" in text and "per retained job (estimate)" in text
    assert "unknown" not in text


async def test_a_count_cap_that_cuts_history_short_of_retention_is_a_warning(
    redis_url: str,
) -> None:
    """Given retention_maxlen 30 and events_maxlen 20, and 300 entries in the default
    stream and the events stream (acked, then trimmed by the janitor; the events
    capped as they were written), each of them keeps about its cap and reaches back
    seconds, not the 7 days retention_s promises: a warning per stream names the
    setting that cut it. Read under the default settings, the same streams warn
    of nothing: no cap cut them."""
    name = queue_name()
    capped = App(
        name, settings=Settings(redis_url=redis_url, retention_maxlen=30, events_maxlen=20)
    )
    async with capped:
        try:
            await fill_history(capped, 300, events_cap=20)
            assert await Janitor(capped, "test").trim() > 0
            stats = await collect(capped)
            by_name = {h.name: h for h in stats.history.streams}
            default, events = by_name["default"], by_name["events"]
            assert (default.cap, default.cap_setting) == (30, "retention_maxlen")
            assert (events.cap, events.cap_setting) == (20, "events_maxlen")
            assert 30 <= default.length < 300 and 20 <= events.length < 300
            assert default.cut_short and events.cut_short
            assert not by_name["high"].cut_short and not by_name["dlq"].cut_short
            warnings = stats.history.warnings
            assert len(warnings) == 2, warnings
            assert warnings[0].startswith("default: cut by retention_maxlen 30")
            assert warnings[1].startswith("events: cut by events_maxlen 20")
            assert all("not retention_s's 7.0d" in w for w in warnings)
            assert stats.to_dict()["history"]["warnings"] == list(warnings)
            text = as_text(stats)
            assert "default: cut by retention_maxlen 30" in text, text

            async with App(name, redis_url=redis_url) as uncapped:
                assert (await collect(uncapped)).history.warnings == ()
        finally:
            await drop_queue(capped)


async def test_a_stream_at_its_cap_that_still_reaches_past_retention_is_not_cut_short(
    redis_url: str,
) -> None:
    """A stream that holds as many entries as its cap, but whose oldest entry is older
    than retention_s, keeps all that was promised: no warning."""
    name = queue_name()
    app = App(name, settings=Settings(redis_url=redis_url, retention_maxlen=5))
    async with app:
        try:
            redis = await app.redis()
            seconds, _micros = await redis.time()
            eight_days_ago_ms = (seconds - 8 * 86_400) * 1000
            for n in range(10):
                await redis.xadd(app.keys.stream("low"), {"n": n}, id=f"{eight_days_ago_ms}-{n}")
            stats = await collect(app)
            low = next(h for h in stats.history.streams if h.name == "low")
            assert low.length == 10 and low.reach_s is not None and low.reach_s > 7 * 86_400
            assert not low.cut_short and stats.history.warnings == ()
        finally:
            await drop_queue(app)


async def test_memory_the_server_will_not_tell_is_unknown_not_a_crash(
    app: App, redis_url: str
) -> None:
    """A user denied MEMORY (some managed services deny it) still gets every length
    and reach; the memory reads as unknown, and so does the memory per job."""

    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    await add.enqueue(1, 2)
    async with user_without_memory(app, redis_url) as url, App(app.name, redis_url=url) as limited:
        stats = await collect(limited)
    default = next(h for h in stats.history.streams if h.name == "default")
    assert default.length == 1 and default.reach_s is not None
    assert all(h.memory_bytes is None for h in stats.history.streams)
    assert stats.history.memory_bytes is None and stats.history.bytes_per_retained_job is None
    assert stats.to_dict()["history"]["streams"][1]["memory_bytes"] is None
    assert "unknown" in as_text(stats)
