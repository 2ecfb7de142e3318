"""No job can stop a worker: hostile handler behaviour ends that job, nothing more.

Each test runs a worker in-process beside well-behaved jobs and checks three
things: the hostile job reaches a final state with a readable error, the good
jobs succeed exactly once, and the worker is still serving afterwards (a job
enqueued last is run). Before the fixes, each of these stopped or crashed the
whole worker (issue 10, points 1 to 3).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from streamq import App, JobFailed, JobStatus, JobTimedOut, SerializationError, Settings, Worker
from streamq.keys import GROUP
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio


def register_ok(app: App) -> Any:
    @app.task(name="ok")
    async def ok(n: int) -> int:
        await asyncio.sleep(0.01)
        return n

    return ok


async def assert_final(job: Any, status: JobStatus, timeout: float = 10.0) -> dict[str, str]:
    await wait_until(
        lambda: _status_is(job, status), timeout=timeout, description=f"{job} to be {status}"
    )
    return dict(await job.info())


async def _status_is(job: Any, status: JobStatus) -> bool:
    return bool(await job.status() == status)


async def test_handler_raising_cancelled_error_fails_only_its_job(app: App) -> None:
    ok = register_ok(app)

    @app.task(name="cancels", max_retries=0)
    async def cancels() -> None:
        async def forever() -> None:
            await asyncio.sleep(3600)

        inner = asyncio.ensure_future(forever())
        await asyncio.sleep(0)
        inner.cancel()
        await inner  # re-raises the inner task's CancelledError in the handler

    @app.task(name="raises_cancelled", max_retries=0)
    async def raises_cancelled() -> None:
        raise asyncio.CancelledError("leaked by a library")

    async with running_worker(app, concurrency=20) as worker:
        good = [await ok.enqueue(i) for i in range(10)]
        bad = [await cancels.enqueue(), await raises_cancelled.enqueue()]
        more = [await ok.enqueue(i) for i in range(10, 20)]
        for job in bad:
            info = await assert_final(job, JobStatus.FAILED)
            assert info["error_type"] == "CancelledError"
        assert [await j.result(timeout=10) for j in good + more] == list(range(20))
        assert not worker.stopping
        last = await ok.enqueue(99)
        assert await last.result(timeout=10) == 99


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class BrokenBoth(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken too")


class OddModule(Exception):
    pass


OddModule.__module__ = None  # type: ignore[assignment]
OddModule.__qualname__ = "Odd\udcffName"


@pytest.mark.parametrize(
    "make, expect_type, expect_text",
    [
        (lambda: BrokenStr("x"), "BrokenStr", "BrokenStr"),
        (lambda: BrokenBoth("x"), "BrokenBoth", "BrokenBoth"),
        (lambda: ValueError("cannot parse /data/caf\udce9.txt"), "ValueError", "caf\\udce9"),
        (lambda: OddModule("odd"), "Odd\\udcffName", "odd"),
        (lambda: ValueError(b"bytes \xff message"), "ValueError", "bytes"),
    ],
    ids=["broken-str", "broken-str-and-repr", "lone-surrogate", "odd-module", "bytes-arg"],
)
async def test_unprintable_failures_end_the_job_readably(
    app: App, make: Any, expect_type: str, expect_text: str
) -> None:
    ok = register_ok(app)

    @app.task(name="bad", max_retries=0)
    async def bad() -> None:
        raise make()

    async with running_worker(app, concurrency=4) as worker:
        before = [await ok.enqueue(i) for i in range(5)]
        job = await bad.enqueue()
        info = await assert_final(job, JobStatus.FAILED)
        assert info["error_type"] == expect_type
        assert expect_text in info["error"] + info["traceback"]
        assert [await j.result(timeout=10) for j in before] == list(range(5))
        after = await ok.enqueue(7)
        assert await after.result(timeout=10) == 7
        assert not worker.stopping
    redis = await app.redis()
    ((_, dead),) = await redis.xrange(app.keys.dlq)
    assert dead[b"dlq_error_type"].decode() == expect_type
    with pytest.raises(JobFailed):
        await job.result(timeout=1)


async def test_sync_handler_unprintable_failure(app: App) -> None:
    ok = register_ok(app)

    @app.task(name="bad_sync", max_retries=0)
    def bad_sync() -> None:
        raise ValueError("path caf\udce9")

    async with running_worker(app, concurrency=2):
        job = await bad_sync.enqueue()
        info = await assert_final(job, JobStatus.FAILED)
        assert "caf\\udce9" in info["error"]
        assert await (await ok.enqueue(3)).result(timeout=10) == 3


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


async def test_enqueue_refuses_a_payload_nested_deeper_than_a_worker_decodes(app: App) -> None:
    @app.task(name="takes")
    async def takes(value: Any) -> None: ...

    with pytest.raises(SerializationError, match="nested"):
        await takes.enqueue(nested(1000))
    with pytest.raises(SerializationError, match="nested"):
        await takes.enqueue({"a": nested(300)})
    await takes.enqueue(nested(50))  # ordinary nesting is fine


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_deeply_nested_foreign_entry_is_poison(app: App, depth: int) -> None:
    ok = register_ok(app)

    @app.task(name="takes")
    async def takes(value: Any) -> None: ...

    redis = await app.redis()
    stream = app.keys.stream("default")
    payload = '{"args":[' + "[" * depth + "]" * depth + '],"kwargs":{}}'
    await redis.xadd(
        stream,
        {"v": "1", "id": "deep", "task": "takes", "ct": "json", "payload": payload,
         "attempt": "1", "enq_ms": "0"},
    )  # fmt: skip
    async with running_worker(app, concurrency=2):
        job = app.job("deep")
        await wait_until(
            lambda: _dlq_len(app, 1), timeout=10, description="the deep entry in the DLQ"
        )
        assert await (await ok.enqueue(1)).result(timeout=10) == 1
    ((_, dead),) = await redis.xrange(app.keys.dlq)
    assert b"nested" in dead[b"dlq_reason"]
    assert job.id == "deep"
    assert int((await redis.xpending(stream, GROUP))["pending"]) == 0


async def _dlq_len(app: App, n: int) -> bool:
    redis = await app.redis()
    return bool(await redis.xlen(app.keys.dlq) == n)


async def test_arguments_that_do_not_fit_the_signature_are_dead_at_once(app: App) -> None:
    """Running again cannot make arguments fit: no retries, no backoff."""

    @app.task(name="two", max_retries=3, backoff_base=10)
    async def two(a: int, b: int) -> int:
        return a + b

    redis = await app.redis()
    payload = json.dumps({"args": [1, 2, 3], "kwargs": {}})
    await redis.xadd(
        app.keys.stream("default"),
        {"v": "1", "id": "misfit", "task": "two", "ct": "json", "payload": payload,
         "attempt": "1", "enq_ms": "0"},
    )  # fmt: skip
    await Worker(app, burst=True).run()
    ((_, dead),) = await redis.xrange(app.keys.dlq)
    assert b"signature" in dead[b"dlq_reason"]
    assert dead[b"dlq_deliveries"] == b"1"
    assert await redis.zcard(app.keys.delayed) == 0


async def test_timed_out_sync_handler_never_overlaps_its_retry(app: App) -> None:
    """``concurrency`` bounds running handler bodies, timed out or not.

    Before: the abandoned thread went on, its slot was released, and at
    concurrency 1 three runs of one job ran at once.
    """
    lock = threading.Lock()
    running = 0
    most = 0
    runs = 0

    @app.task(name="overruns", timeout=0.1, max_retries=2, backoff_base=0)
    def overruns() -> None:
        nonlocal running, most, runs
        with lock:
            running += 1
            runs += 1
            most = max(most, running)
        time.sleep(0.4)  # ignores stop_requested: the worst case
        with lock:
            running -= 1

    job = await overruns.enqueue()
    async with running_worker(app, concurrency=1) as worker:
        with pytest.raises(JobTimedOut):
            await job.result(timeout=20)
        assert runs == 3
        assert most == 1
        mine = f"streamq-handler:{worker.consumer}"
        assert sum(t.name == mine for t in threading.enumerate()) <= 1


async def test_oversize_result_fails_the_job_without_retries(redis_url: str) -> None:
    """A result larger than max_result_bytes fails at once: running again would
    produce it again. Before, any size was written into the job hash."""
    app = App(queue_name(), redis_url=redis_url, settings=Settings(max_result_bytes=1000))
    async with app:

        @app.task(name="big", max_retries=3)
        async def big(n: int) -> str:
            return "x" * n

        small, large = await big.enqueue(10), await big.enqueue(5000)
        await Worker(app, burst=True).run()
        assert await small.result(timeout=1) == "x" * 10
        with pytest.raises(JobFailed, match="max_result_bytes is 1000") as failed:
            await large.result(timeout=1)
        assert failed.value.error_type == "ResultTooLarge"
        assert (await large.info())["attempts"] == "1"
        await drop_queue(app)
