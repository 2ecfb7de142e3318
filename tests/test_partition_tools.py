"""Operator tools on partitioned queues (``streamq.partitions``): replay --follow, the
trimmed-history note and --redrive, doctor, cron ticks, ``queue partitions --reset``
and limits, each over every partition."""

from __future__ import annotations

import itertools
import signal
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import anyio
import orjson
import pytest
from typer.testing import CliRunner

from streamq import App, Worker
from streamq.cli import cli
from streamq.cron import job_id_for, list_schedules
from streamq.doctor import Status, run_checks
from streamq.doctor_partitions import check_placement
from streamq.job import JobStatus
from streamq.limits import Limit
from streamq.partition_ops import AllReplay
from streamq.partitions import read_mark, record_count, stable_index
from streamq.records import HistoryRecord, entry_key
from tests.apps.process import streamq_child
from tests.apps.slow import ADD, register
from tests.conftest import drop_queue, queue_name, running_worker, subprocess_env, wait_until
from tests.test_partitions import make_app

pytestmark = pytest.mark.anyio


async def drop_all(app: App, count: int) -> None:
    for i in range(count):
        await drop_queue(app.partition(i))


def as_module(monkeypatch: pytest.MonkeyPatch, app: App) -> str:
    """An ``APP`` path for the CLI: an App of ``app``'s queue, settings and tasks
    (the CLI runs it in its own event loop)."""
    module = types.ModuleType(f"streamq_tools_{app.name}")
    twin = App(app.name, settings=app.settings)
    for name, task in app.tasks.items():
        twin.task(name=name, **_routing(task))(task.fn)
    module.app = twin  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return f"{module.__name__}:app"


async def cli_run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(cli, list(args), input=stdin)
    )
    return result.exit_code, result.stdout, result.stderr


def _routing(task: Any) -> dict[str, Any]:
    return {"partition_by": task.options.partition_by} if task.options.partition_by else {}


def plain(n: int) -> int:
    return n


# -- replay ----------------------------------------------------------------------------------


async def test_follow_merges_every_partitions_events_in_id_order(redis_url: str) -> None:
    """Nine jobs enqueued one by one over three partitions: followed from the start,
    each partition's backlog arrives in one batch, yet the events come out interleaved
    in id order; a job enqueued while following is seen too."""
    async with make_app(redis_url, 3) as app:
        task = app.task(name="t.plain")(plain)
        jobs = [await task.enqueue(n) for n in range(9)]
        assert [j.partition for j in jobs[:3]] != [jobs[0].partition] * 3
        seen: list[HistoryRecord] = []
        everything = await AllReplay.of(app)
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                await everything.follow(
                    seen.append, after="0-0", kinds=["enqueued"], block_ms=100, window_ms=1000
                )

            tg.start_soon(follow)
            await wait_until(lambda: len(seen) == 9, description="the backlog")
            late = await task.enqueue(9)
            await wait_until(lambda: len(seen) == 10, description="a live event")
            tg.cancel_scope.cancel()
        order = [(entry_key(r.id), r.partition) for r in seen]
        assert order == sorted(order)  # by id; the same id in two partitions: by partition
        assert {r.job_id for r in seen} == {j.id for j in [*jobs, late]}
        changes = sum(a.partition != b.partition for a, b in itertools.pairwise(seen[:9]))
        assert changes > 2, [r.partition for r in seen]  # not one partition's batch after another
        await drop_all(app, 3)


async def test_replay_notes_trimmed_history_per_partition_and_redrives_into_each_partition(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trimmed-history note names the partition whose events were trimmed; JSON
    records carry their partition; --redrive puts each job back into its partition."""
    async with make_app(redis_url, 3) as app:
        app.task(name="t.plain", partition_by="n")(plain)
        path = as_module(monkeypatch, app)
        jobs = await app.tasks["t.plain"].enqueue_many([(n,) for n in range(30)])
        where = {j.id: j.partition for j in jobs}
        redis = await app.redis()
        events = app.partition(2).keys.events
        (first, _), *_ = await redis.xrange(events, count=1)
        await redis.xdel(events, first)  # as retention would: the oldest entry gone
        code, out, err = await cli_run("replay", path, "--since", "2020-01-01")
        assert code == 0, err
        assert "events in partition 2 before" in err and "partition 1" not in err, err
        records = [orjson.loads(line) for line in out.splitlines()]
        assert len(records) == 29 and {r.get("partition", 0) for r in records} == {0, 1, 2}
        for record in records:
            assert record.get("partition", 0) == where[record["job_id"]]
        code, _out, err = await cli_run("replay", path, "--redrive", "--task", "t.plain", "--yes")
        assert code == 0 and "re-enqueued 30 jobs" in err, err
        for index in range(3):
            stream = app.partition(index).keys.stream("default")
            entries = await redis.xrange(stream)
            assert len(entries) == 2 * sum(1 for p in where.values() if p == index)
            payloads = [f[b"payload"] for _, f in entries]
            assert payloads[: len(payloads) // 2] == payloads[len(payloads) // 2 :]
        await drop_all(app, 3)


# -- doctor ----------------------------------------------------------------------------------


async def test_doctor_reports_partitions_groups_and_key_types_of_every_partition(
    redis_url: str,
) -> None:
    """A queue shrunk from 4 to 2 with a job left in partition 3, a partition whose
    stream no worker has read and a wrong-typed key in partition 3: doctor names each."""
    name = queue_name()
    async with make_app(redis_url, 4, name) as before:
        task = before.task(name="t.plain")(plain)
        await record_count(before)  # as a routed enqueue does
        for index in range(4):
            await before.partition(index).enqueue_calls(task, [((index,), {})], routed=True)
        redis = await before.redis()
        await redis.set(before.partition(1).keys.delayed, "not a zset")
        await redis.xgroup_destroy(before.partition(3).keys.stream("default"), "workers")
    async with make_app(redis_url, 2, name) as app:
        app.task(name="t.plain")(plain)
        checks = {c.name: c for c in await run_checks(app)}
        assert checks["partitions"].status is Status.WARN
        assert "configured 2; high-water mark 4" in checks["partitions"].detail
        assert "partition 2: unread 1" in checks["partitions"].detail
        assert "--reset" in checks["partitions"].fix
        assert checks["partition groups"].status is Status.WARN
        assert app.partition(3).keys.stream("default") in checks["partition groups"].detail
        assert checks["partition keys"].status is Status.PROBLEM
        assert app.partition(1).keys.delayed in checks["partition keys"].detail
        assert "placement" not in " ".join(checks)  # standalone: no masters to spread over
        assert await read_mark(app) == 4  # read, never changed
        await drop_all(app, 4)


def test_doctor_warns_when_every_partition_is_on_one_master() -> None:
    one = check_placement({0: "a:1", 1: "a:1", 2: "a:1"}, masters=3)
    assert one.status is Status.WARN and "all 3 partitions are on one master" in one.detail
    spread = check_placement({0: "a:1", 1: "b:2", 2: "a:1"}, masters=3)
    assert spread.status is Status.OK
    assert (
        spread.detail
        == "2 of 3 masters hold the partitions (a:1: partitions 0, 2; b:2: partition 1)"
    )
    assert check_placement({0: "a:1", 1: "a:1"}, masters=1).status is Status.OK


# -- cron ------------------------------------------------------------------------------------


async def test_cron_ticks_of_a_partitioned_queue_are_enqueued_once_in_their_ids_partition(
    redis_url: str,
) -> None:
    """Two workers, each with a janitor in every partition: each tick is enqueued once,
    by partition 0's janitor (the schedule state lives there only), into the partition
    its fixed job id routes to; ``cron list`` finds the last tick's job there."""
    async with make_app(redis_url, 4) as app:
        ran: list[str] = []

        @app.periodic(every=0.1, name="beat")
        async def beat() -> None:
            ran.append("x")

        async with running_worker(app), running_worker(app):
            await wait_until(lambda: len(ran) >= 4, description="four ticks run")
        redis = await app.redis()
        found: dict[str, list[int]] = {}
        for index in range(4):
            view = app.partition(index)
            for _id, fields in await redis.xrange(view.keys.stream(app.default_priority)):
                found.setdefault(fields[b"id"].decode(), []).append(index)
            assert bool(await redis.exists(view.keys.cron)) == (index == 0)
        assert len(found) >= 4
        for job_id, places in found.items():
            assert job_id.startswith("cron:beat:"), job_id
            assert places == [stable_index(job_id, 4)], (job_id, places)
        (info,) = await list_schedules(app)
        assert info.last_job_id is not None and info.last_job_id.startswith("cron:beat:")
        assert info.last_job_id == job_id_for("beat", int(info.last_job_id.split(":")[-1]))
        assert info.last_job_status is not None
        await drop_all(app, 4)


# -- shrinking -------------------------------------------------------------------------------


async def test_queue_partitions_reset_refuses_while_a_partition_beyond_holds_jobs(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = queue_name()
    async with make_app(redis_url, 4, name) as before:
        task = before.task(name="t.plain")(plain)
        jobs = await task.enqueue_many([(n,) for n in range(4)])
        assert {j.partition for j in jobs} == {0, 1, 2, 3}
    async with make_app(redis_url, 2, name) as after:
        after.task(name="t.plain")(plain)
        path = as_module(monkeypatch, after)
        code, out, err = await cli_run("queue", "partitions", path, "--reset")
        assert code == 1 and "mark not lowered" in err
        assert "partition 2: unread 1" in out and "partition 3: unread 1" in out
        assert await read_mark(after) == 4
        with anyio.fail_after(10):
            await Worker(after, burst=True).run()  # drains all four
        assert {await after.job(j.id).status() for j in jobs} == {JobStatus.SUCCEEDED}
        code, out, err = await cli_run("queue", "partitions", path, "--reset")
        assert code == 0, (out, err)
        assert out.startswith("configured: 2; high-water mark: 2; covered: 2")
        assert await read_mark(after) == 2
        await drop_all(after, 4)


# -- limits ----------------------------------------------------------------------------------


async def test_a_rate_limit_holds_per_partition_so_n_partitions_admit_n_times_the_rate(
    redis_url: str,
) -> None:
    """Limits are kept per partition (each has its own token bucket and slots), as
    documented: a rate of R on a queue of N partitions admits at most N x R. Here
    "1/min" (burst 1) over 3 partitions: 3 of 6 jobs start, one per partition; the
    other 3 are deferred by their partition's limiter."""
    async with make_app(redis_url, 3) as app:
        started: list[int] = []

        @app.task(name="t.rated", limit=Limit(rate="1/min"))
        async def rated(n: int) -> None:
            started.append(n)

        jobs = await rated.enqueue_many([(n,) for n in range(6)])
        assert sorted(j.partition for j in jobs) == [0, 0, 1, 1, 2, 2]
        redis = await app.redis()

        async def deferred() -> int:
            kinds: list[bytes] = []
            for index in range(3):
                for _id, f in await redis.xrange(app.partition(index).keys.events):
                    kinds.append(f[b"kind"])
            return kinds.count(b"limited")

        async with running_worker(app, concurrency=10):
            await wait_until(lambda: len(started) == 3, description="one start per partition")
            await wait_until(_at_least(deferred, 3), description="the rest deferred")
        assert len(started) == 3
        assert sorted(jobs[n].partition for n in started) == [0, 1, 2]
        await drop_all(app, 3)


def _at_least(read: Callable[[], Any], count: int) -> Callable[[], Any]:
    async def check() -> bool:
        return bool(await read() >= count)

    return check


# -- a raised count ---------------------------------------------------------------------------


async def test_a_running_worker_starts_lanes_for_partitions_added_after_it_started(
    redis_url: str,
) -> None:
    """A worker started on a 2-partition queue; a producer then raises the count to 4.
    Within a janitor interval the worker reads the new mark and runs partitions 2
    and 3 too, with their janitor (a delayed job there is promoted and run)."""
    name = queue_name()
    async with make_app(redis_url, 2, name) as app, make_app(redis_url, 4, name) as wider:
        app.task(name="t.plain")(plain)
        task = wider.task(name="t.plain")(plain)
        async with running_worker(app) as worker:
            jobs = await task.enqueue_many([(n,) for n in range(8)])
            later = await wider.partition(3).enqueue_calls(task, [((8,), {})], delay_ms=50)
            assert {j.partition for j in jobs} == {0, 1, 2, 3}
            with anyio.fail_after(10):
                assert [await j.result(timeout=10) for j in jobs + later] == list(range(9))
            assert {lane.app.partition_index for lane in worker._lanes.values()} == {0, 1, 2, 3}
        await drop_all(app, 4)


async def test_replay_follow_cli_prints_the_new_events_of_every_partition(redis_url: str) -> None:
    """``streamq replay --follow`` on a 3-partition queue prints the events written
    to partitions 1 and 2 after it started, not only partition 0's; Ctrl-C ends it."""
    name = queue_name()
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=name, STREAMQ_PARTITIONS="3")
    async with register(make_app(redis_url, 3, name)) as app:
        first = await app.partition(0).enqueue_calls(app.tasks[ADD], [((1, 1), {})], routed=True)
        since = str(int(time.time() * 1000) - 60_000)
        args = [
            "replay",
            "tests.apps.slow:app",
            "--follow",
            "--since",
            since,
            "--status",
            "enqueued",
        ]
        async with streamq_child(args, env=env) as child:
            await child.wait_for_line(lambda line: first[0].id in line, 20, "the history")
            for index in (1, 2):
                (job,) = await app.partition(index).enqueue_calls(
                    app.tasks[ADD], [((index, 1), {})], routed=True
                )
                shown = f'"job_id":"{job.id}"'
                await child.wait_for_line(lambda line, s=shown: s in line, 20, f"partition {index}")
                assert f'"partition":{index}' in next(x for x in child.stdout if shown in x)
            child.signal(signal.SIGINT)
            assert await child.wait(timeout_s=20) == 0
        await drop_all(app, 3)
