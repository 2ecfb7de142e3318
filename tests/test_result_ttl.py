"""Result TTL per task and per job: how long a finished job's hash is kept.

The worker picks it (the entry's ``with_options(result_ttl=...)`` override,
else the task's ``result_ttl``, else the App's) and ``complete.lua`` sets it
per job, for successes and failures alike; a job the worker dead-letters
(arguments that do not fit) gets its task's TTL too.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from streamq import App, ConfigError, JobStatus
from streamq.decide import result_ttl_for
from streamq.envelope import decode
from streamq.task import TaskOptions
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio

DAY_MS = 86_400_000


async def pttl(app: App, job_id: str) -> int:
    redis = await app.redis()
    return int(await redis.pttl(app.keys.job(job_id)))


def within(ms: int, expected_ms: int) -> bool:
    """A TTL just set to ``expected_ms`` (a few seconds of slack for a slow machine)."""
    return expected_ms - 5_000 < ms <= expected_ms


def test_the_entry_wins_over_the_task_over_the_app() -> None:
    base = {b"v": b"1", b"id": b"j", b"task": b"t", b"ct": b"json", b"payload": b"{}"}
    plain, override = decode(base), decode({**base, b"result_ttl": b"7.5"})
    assert result_ttl_for(override, TaskOptions(result_ttl_s=60), 100) == 7.5
    assert result_ttl_for(plain, TaskOptions(result_ttl_s=60), 100) == 60
    assert result_ttl_for(plain, TaskOptions(), 100) == 100
    assert result_ttl_for(None, None, 100) == 100


@pytest.mark.parametrize("bad", [0, -1, 0.0001, float("nan"), float("inf"), "60", True])
async def test_a_bad_result_ttl_is_a_config_error(app: App, bad: Any) -> None:
    with pytest.raises(ConfigError, match="result_ttl"):
        app.task(name="bad", result_ttl=bad)

    @app.task(name="ok")
    async def ok() -> None: ...

    with pytest.raises(ConfigError, match="result_ttl"):
        ok.with_options(result_ttl=bad)


async def test_per_task_and_per_job_result_ttl_after_success_and_failure(app: App) -> None:
    """Given the App's default of a day, a task's result_ttl=60 and a job's
    result_ttl=30 show in the finished hashes' PTTL, for success and failure."""

    @app.task(name="short", result_ttl=60, max_retries=0)
    async def short(fail: bool) -> str:
        if fail:
            raise ValueError("no")
        return "ok"

    @app.task(name="plain", max_retries=0)
    async def plain() -> str:
        return "ok"

    task_ok, task_failed = await short.enqueue(False), await short.enqueue(True)
    shorter = short.with_options(result_ttl=30)
    job_ok, job_failed = await shorter.enqueue(False), await shorter.enqueue(True)
    default = await plain.enqueue()
    redis = await app.redis()
    fields = [f for _, f in await redis.xrange(app.keys.stream("default"))]
    assert [f.get(b"result_ttl") for f in fields] == [None, None, b"30.0", b"30.0", None]
    async with running_worker(app):
        for job in (task_ok, job_ok, default):
            assert await job.wait(timeout=10) is JobStatus.SUCCEEDED
        for job in (task_failed, job_failed):
            assert await job.wait(timeout=10) is JobStatus.FAILED
    assert within(await pttl(app, task_ok.id), 60_000)
    assert within(await pttl(app, task_failed.id), 60_000)
    assert within(await pttl(app, job_ok.id), 30_000)
    assert within(await pttl(app, job_failed.id), 30_000)
    assert within(await pttl(app, default.id), DAY_MS)


async def test_a_dead_lettered_job_keeps_its_tasks_result_ttl(redis_url: str) -> None:
    """A job whose arguments do not fit the worker's handler goes to the DLQ; its
    hash gets the task's result TTL, as a failure would, not the App's."""
    name = queue_name()
    producer, worker_app = App(name, redis_url=redis_url), App(name, redis_url=redis_url)
    async with producer, worker_app:

        @producer.task(name="when")
        async def when(at: str) -> None: ...

        @worker_app.task(name="when", result_ttl=45)
        async def when_worker(at: dt.datetime) -> None: ...

        job = await when.enqueue("not a date")
        async with running_worker(worker_app):
            assert await job.wait(timeout=10) is JobStatus.DEAD
        assert within(await pttl(producer, job.id), 45_000)
        await drop_queue(producer)
