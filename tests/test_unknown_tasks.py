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

from streamq import App, DeadLetters, JobStatus, Settings
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


async def test_a_bounced_job_is_located_and_a_requeue_starts_its_count_afresh(
    redis_url: str,
) -> None:
    """The hash says where a bounced message waits (msg_id 'delayed', due_ms), so
    the janitor's lost-job check never takes it for lost; a DLQ requeue drops
    the dead run's bounce count."""
    name = queue_name()
    producer = make_app(name, redis_url, ["ghost"])
    slow = Settings(janitor_interval_s=30.0, visibility_timeout_s=60.0)
    stranger = App(name, redis_url=redis_url, settings=slow)
    async with producer, stranger:
        job = await producer.enqueue("ghost", 1)
        redis = await producer.redis()
        async with running_worker(stranger):

            async def bounced() -> bool:
                return (await job.info()).get("msg_id") == "delayed"

            await wait_until(bounced, timeout=20, description="the job bounced")
        info = await job.info()
        assert info["status"] == "queued" and int(info["due_ms"]) > 0
        scripts = await producer.scripts()
        lost = await scripts.lost(
            events=producer.keys.events, delayed=producer.keys.delayed,
            streams=producer.streams, group="workers",
            result_ttl_ms=1000, safe_age_ms=0,
            jobs=[(job.id.encode(), producer.keys.job(job.id).encode())], mark=False,
        )  # fmt: skip
        assert lost == []
        ((member, _),) = await redis.zrange(producer.keys.delayed, 0, -1, withscores=True)
        assert b'"bounces","1"' in member
        dlq_id = await redis.xadd(
            producer.keys.dlq,
            {"v": "1", "id": "old-ghost", "task": "ghost", "ct": "json",
             "payload": '{"args":[1],"kwargs":{}}', "attempt": "1", "enq_ms": "0",
             "bounces": "12", "dlq_reason": "no worker knew it", "dlq_error_type": "UnknownTask"},
        )  # fmt: skip
        assert await DeadLetters(producer).requeue(dlq_id.decode()) == "old-ghost"
        ((_, entry),) = await redis.xrevrange(producer.keys.stream("default"), count=1)
        assert entry[b"id"] == b"old-ghost" and b"bounces" not in entry
        await drop_queue(producer)
