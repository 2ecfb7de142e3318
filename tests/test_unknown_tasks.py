"""Workers with different task sets on one queue (issue 10, point 12).

A worker that does not know a message's task hands it back through the
delayed set (a bounce, not a delivery), so a worker that knows the task gets
its chance before anything is dead-lettered; it never marks such a job
``running``. Past ``MAX_BOUNCES`` the job goes to the DLQ as ``UnknownTask``
with the likely cause. Enqueue warns about ``__main__.`` task names.
"""

from __future__ import annotations

import warnings

import anyio
import pytest

from streamq import App, JobStatus, Settings
from streamq.worker import MAX_BOUNCES, unknown_task_hint
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio

FAST = Settings(visibility_timeout_s=0.3, janitor_interval_s=0.05, max_deliveries=2)


def make_app(name: str, redis_url: str, tasks: list[str]) -> App:
    app = App(name, redis_url=redis_url, settings=FAST)
    for task in tasks:

        async def handler(n: int, _task: str = task) -> str:
            return f"{_task}:{n}"

        app.task(name=task)(handler)
    return app


async def test_workers_with_different_task_sets_share_a_queue(redis_url: str) -> None:
    """Before: a message fetched by the worker that lacks its task sat pending,
    was reclaimed with a delivery each time, and went to the DLQ as
    TooManyDeliveries once max_deliveries (2 here) was passed, whoever held it."""
    name = queue_name()
    producer = make_app(name, redis_url, ["a", "b"])
    only_a = make_app(name, redis_url, ["a"])
    only_b = make_app(name, redis_url, ["b"])
    async with producer, only_a, only_b:
        jobs = []
        for i in range(15):
            jobs.append(await producer.enqueue("a", i))
            jobs.append(await producer.enqueue("b", i))
        async with running_worker(only_a, concurrency=4), running_worker(only_b, concurrency=4):
            with anyio.fail_after(60):
                results = [await job.result(timeout=60) for job in jobs]
        assert results == [f"{t}:{i}" for i in range(15) for t in ("a", "b")]
        redis = await producer.redis()
        assert await redis.xlen(producer.keys.dlq) == 0
        await drop_queue(producer)


async def test_unknown_task_is_never_marked_running_and_ends_as_unknown_task(
    redis_url: str,
) -> None:
    name = queue_name()
    producer = make_app(name, redis_url, ["__main__.resize"])
    worker_app = make_app(name, redis_url, ["images.tasks.resize"])
    async with producer, worker_app:
        with pytest.warns(UserWarning, match="__main__"):
            job = await producer.enqueue("__main__.resize", 1)
        async with running_worker(worker_app):

            async def dead() -> bool:
                return await job.status() == JobStatus.DEAD

            await wait_until(dead, timeout=60, description="the job dead-lettered")
        info = await job.info()
        assert info["error_type"] == "UnknownTask"
        assert f"in {MAX_BOUNCES} tries" in info["error"]
        assert "'images.tasks.resize'" in info["error"]  # names the likely match
        redis = await producer.redis()
        kinds = [e[b"kind"] for _, e in await redis.xrange(producer.keys.events)]
        assert b"started" not in kinds  # never marked running
        assert kinds.count(b"bounced") == MAX_BOUNCES
        assert b"reclaimed" not in kinds
        await drop_queue(producer)


async def test_enqueue_warns_once_per_main_task(app: App) -> None:
    @app.task(name="__main__.job")
    async def job() -> None: ...

    with pytest.warns(UserWarning, match=r"__main__\.job"):
        await job.enqueue()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await job.enqueue()  # once is enough


def test_hint_names_the_cause() -> None:
    assert "ran its module as a script" in unknown_task_hint("__main__.send", ["app.send"])
    assert "'app.send'" in unknown_task_hint("__main__.send", ["app.send"])
    assert "different module names" in unknown_task_hint("tasks.send", ["app.tasks.send"])
    assert "deploy a worker" in unknown_task_hint("x.y", [])
