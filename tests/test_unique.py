"""Unique jobs: one live job per key, throttle, debounce, decided in the enqueue script."""

from __future__ import annotations

import json
import subprocess

import pytest

from streamq import App, ConfigError, JobStatus, unique
from tests.apps.process import python_child
from tests.conftest import running_worker, subprocess_env, wait_until

pytestmark = pytest.mark.anyio


async def stream_length(app: App) -> int:
    redis = await app.redis()
    return sum([await redis.xlen(s) for s in app.streams])


async def sweep(app: App) -> int:
    """The janitor's unique-key sweep, over the whole keyspace (a pass does one step)."""
    redis, scripts = await app.node_redis(), await app.scripts()  # SCAN: one node
    cursor, released = await unique.sweep(redis, scripts, app.keys, 0)
    while cursor:
        cursor, more = await unique.sweep(redis, scripts, app.keys, cursor)
        released += more
    return released


async def test_a_second_enqueue_with_the_key_returns_the_live_job(app: App) -> None:
    @app.task
    async def invoice(n: int) -> int:
        return n

    first = await invoice.with_options(key="invoice-42").enqueue(1)
    second = await invoice.with_options(key="invoice-42").enqueue(2)
    other = await invoice.with_options(key="invoice-43").enqueue(3)
    assert second.id == first.id and other.id != first.id
    assert await stream_length(app) == 2
    async with running_worker(app):
        assert await first.result(timeout=10) == 1
        assert await other.result(timeout=10) == 3
    # Final: the key is free again, and a new job of the key is added.
    third = await invoice.with_options(key="invoice-42").enqueue(4)
    assert third.id != first.id
    assert await third.status() == JobStatus.QUEUED
    async with running_worker(app):
        assert await third.result(timeout=10) == 4
    # The sweep releases the key of a final job (the worker's own janitor may have
    # already): no key of a finished job is left without a TTL.
    await sweep(app)
    redis = await app.node_redis()
    assert await redis.pttl(app.keys.unique("invoice-42")) != -1


async def test_key_ttl_holds_the_key_after_the_job_finished(app: App) -> None:
    @app.task
    async def report(n: int) -> int:
        return n

    job = await report.with_options(key="daily", key_ttl=60).enqueue(1)
    async with running_worker(app):
        await job.result(timeout=10)
    again = await report.with_options(key="daily", key_ttl=60).enqueue(2)
    assert again.id == job.id
    # The sweep gives the key the rest of its minute, no more (the worker's own
    # janitor may have swept it first: the TTL says which it got, not the count).
    await sweep(app)
    redis = await app.redis()
    ttl = await redis.pttl(app.keys.unique("daily"))
    assert 50_000 < ttl <= 60_000


async def test_a_key_whose_job_hash_is_gone_is_taken_over(app: App) -> None:
    @app.task
    async def work(n: int) -> int:
        return n

    job = await work.with_options(key="k").enqueue(1)
    redis = await app.redis()
    await redis.delete(app.keys.job(job.id))  # e.g. expired long ago
    again = await work.with_options(key="k").enqueue(2)
    assert again.id != job.id
    assert await redis.get(app.keys.unique("k")) == again.id.encode()
    async with running_worker(app):
        assert await again.result(timeout=10) == 2
    await sweep(app)


async def test_throttle_lets_the_first_enqueue_win_for_its_window(app: App) -> None:
    @app.task
    async def ping(n: int) -> None: ...

    first = await ping.with_options(key="t", throttle=0.3).enqueue(1)
    assert (await ping.with_options(key="t", throttle=0.3).enqueue(2)).id == first.id
    redis = await app.redis()
    assert 0 < await redis.pttl(app.keys.unique("t")) <= 300
    # After the window a new job is added even though the first has not run.
    await wait_until(lambda: _gone(app, "t"), description="throttle window over")
    later = await ping.with_options(key="t", throttle=0.3).enqueue(3)
    assert later.id != first.id
    assert await stream_length(app) == 2
    async with running_worker(app):
        await first.wait(timeout=10)
        await later.wait(timeout=10)


async def _gone(app: App, key: str) -> bool:
    redis = await app.redis()
    return not await redis.exists(app.keys.unique(key))


async def test_debounce_runs_once_with_the_last_arguments(app: App) -> None:
    seen: list[str] = []

    @app.task
    async def reindex(doc: str) -> str:
        seen.append(doc)
        return doc

    options = {"key": "reindex", "debounce": 0.5}
    first = await reindex.with_options(**options).enqueue("v1")  # type: ignore[arg-type]
    info = await first.info()
    assert info["status"] == "scheduled"
    due_first = int(info["due_ms"])
    second = await reindex.with_options(**options).enqueue("v2")  # type: ignore[arg-type]
    third = await reindex.with_options(**options).enqueue("v3")  # type: ignore[arg-type]
    assert first.id == second.id == third.id
    assert int((await first.info())["due_ms"]) >= due_first  # the wait restarted
    redis = await app.redis()
    assert await redis.zcard(app.keys.delayed) == 1
    async with running_worker(app):
        assert await first.result(timeout=10) == "v3"
    assert seen == ["v3"]
    kinds = [kind for _, kind in await first.event_ids()]
    assert kinds.count("debounced") == 2 and kinds.count("started") == 1
    await sweep(app)


async def test_two_processes_racing_on_each_key_make_one_job(redis_url: str) -> None:
    """Two producers, 40 keys each, released at once: one job per key, both told its id."""
    from tests.conftest import queue_name

    name = queue_name()
    env = subprocess_env(redis_url)
    args = ["-m", "tests.apps.unique_race", name, "40"]
    async with (
        python_child(args, env, stdin=subprocess.PIPE) as a,
        python_child(args, env, stdin=subprocess.PIPE) as b,
    ):
        for child in (a, b):
            await child.wait_for_line(lambda line: "ready" in line, 30, "producer ready")
        for child in (a, b):
            assert child.process.stdin is not None
            await child.process.stdin.send(b"go\n")
        assert await a.wait(30) == 0 and await b.wait(30) == 0
        jobs_a = json.loads(a.stdout[-1])["jobs"]
        jobs_b = json.loads(b.stdout[-1])["jobs"]
    assert jobs_a == jobs_b
    app = App(name, redis_url=redis_url)
    async with app:
        redis = await app.redis()
        assert await redis.xlen(app.keys.stream(app.default_priority)) == 40
        for job_id in jobs_a.values():
            assert await app.job(job_id).status() == JobStatus.QUEUED
        async for key in redis.scan_iter(match=app.keys.pattern(), count=1000):
            await redis.delete(key)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key_ttl": 5}, "need a unique key"),
        ({"key": ""}, "non-empty string"),
        ({"key": "k", "debounce": 1, "throttle": 1}, "cannot be combined"),
        ({"key": "k", "debounce": 0}, "debounce must be"),
        ({"key": "k", "throttle": float("inf")}, "throttle must be"),
        ({"key": "k", "key_ttl": -1}, "key_ttl must be"),
    ],
)
async def test_bad_unique_options_are_config_errors(
    app: App, options: dict[str, object], message: str
) -> None:
    @app.task
    async def work() -> None: ...

    with pytest.raises(ConfigError, match=message):
        work.with_options(**options)  # type: ignore[arg-type]


async def test_enqueue_many_with_a_key_is_refused(app: App) -> None:
    @app.task
    async def work(n: int) -> None: ...

    with pytest.raises(ConfigError, match="unique key"):
        await work.with_options(key="k").enqueue_many([(1,), (2,)])
    assert await stream_length(app) == 0
