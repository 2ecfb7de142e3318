"""Partitioned queues (``streamq.partitions``): routing, workers over partitions,
the janitor in each, shrinking, job lookup by id, unique and chained jobs."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from streamq import App, Worker
from streamq.errors import ConfigError
from streamq.job import JobStatus
from streamq.partitions import read_mark, stable_index
from streamq.settings import Settings
from streamq.worker.partitions import parse_assignment
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio
FAST = {"janitor_interval_s": 0.05, "visibility_timeout_s": 2.0}


def make_app(redis_url: str, partitions: int, name: str | None = None, **settings: Any) -> App:
    return App(
        name or queue_name(),
        settings=Settings(redis_url=redis_url, partitions=partitions, **{**FAST, **settings}),
    )


async def depth(app: App, index: int, priority: str = "default") -> int:
    redis = await app.redis()
    return int(await redis.xlen(app.partition(index).keys.stream(priority)))


async def drop_all(app: App, count: int) -> None:
    for i in range(count):
        await drop_queue(app.partition(i))


def test_partition_count_is_checked_and_read_from_the_environment() -> None:
    with pytest.raises(ConfigError):
        Settings(partitions=0)
    with pytest.raises(ConfigError):
        Settings(partitions=5000)
    assert Settings.from_env({"STREAMQ_PARTITIONS": "8"}).partitions == 8
    with pytest.raises(ConfigError):
        Settings.from_env({"STREAMQ_PARTITIONS": "many"})
    assert parse_assignment("0, 2-4,3") == (0, 2, 3, 4)
    with pytest.raises(ConfigError):
        parse_assignment("3-1")
    app = App("emails", partitions=8)
    assert app.partition(0) is app
    assert app.partition(3).keys.stream("high") == "streamq:{emails#3}:stream:high"
    assert app.keys.stream("high") == "streamq:{emails}:stream:high"  # one partition: as before
    assert stable_index("user-1", 8) == 2116437524 % 8  # CRC-32: the same in every process


async def test_routing_by_key_keeps_a_key_in_one_partition_and_round_robin_spreads(
    redis_url: str,
) -> None:
    async with make_app(redis_url, 4) as app:

        @app.task(name="t.by_user", partition_by="user")
        async def by_user(user: str, n: int) -> None: ...

        @app.task(name="t.plain")
        async def plain(n: int) -> None: ...

        jobs = await by_user.enqueue_many([(f"u{n % 5}", n) for n in range(40)])
        places: dict[str, set[int]] = {}
        for n, job in enumerate(jobs):
            places.setdefault(f"u{n % 5}", set()).add(job.partition)
            assert job.partition == stable_index(f"u{n % 5}", 4)
        assert all(len(p) == 1 for p in places.values())
        keyed = [
            await plain.with_options(partition_key="acct-7").enqueue(n) for n in range(5)
        ]  # fmt: skip
        assert {job.partition for job in keyed} == {stable_index("acct-7", 4)}
        spread = await plain.enqueue_many([(n,) for n in range(8)])
        assert Counter(job.partition for job in spread) == dict.fromkeys(range(4), 2)
        total = sum([await depth(app, i) for i in range(4)])
        assert total == 40 + 5 + 8
        assert await read_mark(app) == 4
        await drop_all(app, 4)


async def test_a_worker_drains_every_partition_with_priority_inside_a_fetch(
    redis_url: str,
) -> None:
    async with make_app(redis_url, 4) as app:
        started: list[str] = []

        @app.task(name="t.job")
        async def job(kind: str) -> None:
            started.append(kind)

        # Low jobs in partitions 0 and 1, high ones in 2 and 3.
        for index, priority in ((0, "low"), (1, "low"), (2, "high"), (3, "high")):
            task = job.with_options(priority=priority)
            await app.partition(index).enqueue_calls(task, [((priority,), {})] * 3)
        async with running_worker(app, concurrency=20):
            await wait_until(lambda: len(started) == 12, description="every partition drained")
        assert started == ["high"] * 6 + ["low"] * 6
        await drop_all(app, 4)


async def test_a_worker_reads_only_its_assigned_partitions(redis_url: str) -> None:
    async with make_app(redis_url, 3) as app:
        ran: list[int] = []

        @app.task(name="t.job", partition_by="n")
        async def job(n: int) -> None:
            ran.append(n)

        jobs = await job.enqueue_many([(n,) for n in range(30)])
        mine = sorted(n for n, j in enumerate(jobs) if j.partition in (1, 2))
        async with running_worker(app, partitions=[1, 2]):
            await wait_until(lambda: len(ran) == len(mine), description="partitions 1-2 drained")
        assert sorted(ran) == mine
        assert await depth(app, 0) == 30 - len(mine)
        assert {await j.status() for j in jobs if j.partition == 0} == {JobStatus.QUEUED}
        await drop_all(app, 3)


async def test_shrinking_keeps_running_jobs_of_partitions_beyond_the_new_count(
    redis_url: str,
) -> None:
    name = queue_name()
    async with make_app(redis_url, 4, name) as before:

        @before.task(name="t.job")
        async def job(n: int) -> int:
            return n

        jobs = await job.enqueue_many([(n,) for n in range(8)])
        assert {j.partition for j in jobs} == {0, 1, 2, 3}
    async with make_app(redis_url, 2, name) as after:
        after.task(name="t.job")(job.fn)
        with anyio.fail_after(10):
            await Worker(after, burst=True).run()
        assert [await after.job(j.id).result() for j in jobs] == list(range(8))
        assert await after.job(jobs[3].id).status() == JobStatus.SUCCEEDED
        await drop_all(after, 4)


async def test_the_janitor_promotes_delayed_jobs_in_every_partition(redis_url: str) -> None:
    async with make_app(redis_url, 3) as app:

        @app.task(name="t.later")
        async def later(n: int) -> int:
            return n

        jobs = [await later.enqueue_in(0.05, n) for n in range(6)]
        assert {j.partition for j in jobs} == {0, 1, 2}
        async with running_worker(app):
            assert [await j.result(timeout=5) for j in jobs] == list(range(6))
        await drop_all(app, 3)


async def test_a_job_is_found_by_id_from_another_app(redis_url: str) -> None:
    name = queue_name()
    async with make_app(redis_url, 4, name) as producer, make_app(redis_url, 4, name) as other:

        @producer.task(name="t.double")
        async def double(n: int) -> int:
            return 2 * n

        other.task(name="t.double")(double.fn)
        jobs = await double.enqueue_many([(n,) for n in range(4)])
        async with running_worker(other):
            for n, job in enumerate(jobs):
                found = other.job(job.id)
                assert await found.result(timeout=5) == 2 * n
                assert found.partition == job.partition
        assert (await other.job(jobs[2].id).details()).status == JobStatus.SUCCEEDED
        await drop_all(producer, 4)


async def test_unique_and_chained_jobs_stay_in_one_partition(redis_url: str) -> None:
    async with make_app(redis_url, 4) as app:

        @app.task(name="t.step")
        async def step(n: int) -> int:
            return n

        first = await step.with_options(key="report-1").enqueue(1)
        again = await step.with_options(key="report-1").enqueue(2)
        assert again.id == first.id
        assert first.partition == stable_index("report-1", 4)
        parent = await step.with_options(partition_key="a").enqueue(10)
        child = await step.with_options(after=[parent.id]).enqueue(11)
        assert child.partition == parent.partition
        other = await step.with_options(partition_key="b").enqueue(12)
        if stable_index("a", 4) != stable_index("b", 4):
            with pytest.raises(ConfigError, match="share one partition"):
                await step.with_options(after=[parent.id, other.id]).enqueue(13)
        async with running_worker(app):
            assert await app.job(child.id).result(timeout=5) == 11
        await drop_all(app, 4)


async def test_dlq_stats_replay_and_empty_cover_every_partition(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    from typer.testing import CliRunner

    from streamq.cli import cli
    from streamq.partition_ops import AllDeadLetters, AllReplay, collect_all

    name = queue_name()

    def register(app: App) -> App:
        @app.task(name="t.boom", max_retries=0)
        async def boom(n: int) -> None:
            raise RuntimeError(f"boom {n}")

        @app.task(name="t.ok")
        async def ok(n: int) -> int:
            return n

        return app

    module = types.ModuleType(f"streamq_partitions_{name}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    module.app = register(make_app(redis_url, 3, name))  # type: ignore[attr-defined]
    path = f"{module.__name__}:app"

    async def cli_run(*args: str) -> str:
        result = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, list(args)))
        assert result.exit_code == 0, result.output
        return result.stdout

    async with register(make_app(redis_url, 3, name)) as app:
        failed = await app.tasks["t.boom"].enqueue_many([(n,) for n in range(3)])
        done = await app.tasks["t.ok"].enqueue_many([(n,) for n in range(3)])
        assert {j.partition for j in failed} == {0, 1, 2}
        async with running_worker(app):
            for job in done:
                await job.wait(timeout=5)
            for job in failed:
                await job.wait(timeout=5)
        stats = await collect_all(app)
        assert stats.dlq == 3
        assert stats.throughput.succeeded == 3
        dlq = AllDeadLetters(app)
        letters = await dlq.entries()
        assert sorted(letter.job_id or "" for letter in letters) == sorted(j.id for j in failed)
        in_two = next(j for j in failed if j.partition == 2)
        address = next(letter.id for letter in letters if letter.job_id == in_two.id)
        assert address.startswith("2/")
        assert "boom" in await cli_run("dlq", "show", path, address)
        assert await dlq.requeue(address) == in_two.id
        assert await dlq.count() == 2
        replay = await AllReplay.of(app)
        kinds = [r.kind async for r in replay.events(job=in_two.id)]
        assert kinds[0] == "enqueued" and "requeued" in kinds
        story = await replay.story(in_two.id)
        assert story and all(r.job_id == in_two.id for r in story)
        events = [r async for r in replay.events()]
        assert [r.ts_ms for r in events] == sorted(r.ts_ms for r in events)
        assert {r.job_id for r in events} >= {j.id for j in failed + done}
        assert "delayed" in await cli_run("stats", path, "--json")
        await app.tasks["t.ok"].enqueue_many([(n,) for n in range(6)])
        assert (await cli_run("queue", "empty", path, "--yes")).startswith("removed 7 jobs")
        listed = await cli_run("queue", "partitions", path)
        assert listed.startswith("configured: 3; high-water mark: 3; covered: 3")
        assert await cli_run("dlq", "purge", path, "--yes") == "deleted 2 entries\n"
        await drop_all(app, 3)
