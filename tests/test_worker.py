"""The worker: priority order, concurrency, threads, timeouts, outcomes, retries."""

from __future__ import annotations

import gc
import threading
import warnings
from typing import Any

import anyio
import pytest

from streamq import App, JobFailed, JobStatus, JobTimedOut, Settings, Worker, current_job
from streamq.keys import GROUP
from streamq.worker.fetch import Fetcher
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio


async def pending_count(app: App, priority: str = "default") -> int:
    redis = await app.redis()
    info = await redis.xpending(app.keys.stream(priority), GROUP)
    return int(info["pending"])


async def event_kinds(app: App, job_id: str) -> list[str]:
    redis = await app.redis()
    return [
        e[b"kind"].decode()
        for _, e in await redis.xrange(app.keys.events)
        if e.get(b"job") == job_id.encode()
    ]


async def test_strict_priority_across_a_backlog(app: App) -> None:
    """A low job never starts while a high one waits: the backlog drains high → low."""
    order: list[str] = []

    @app.task
    async def work(priority: str) -> None:
        order.append(priority)

    for priority in ("low", "default", "high"):
        await work.with_options(priority=priority).enqueue_many([(priority,)] * 5)
    await Worker(app, concurrency=1, burst=True).run()
    assert order == ["high"] * 5 + ["default"] * 5 + ["low"] * 5


async def test_high_job_arriving_later_overtakes_waiting_low_jobs(app: App) -> None:
    order: list[str] = []
    gate = anyio.Event()

    @app.task
    async def work(label: str) -> None:
        order.append(label)
        if label == "first":
            await gate.wait()

    await work.with_options(priority="low").enqueue("first")
    async with running_worker(app, concurrency=1) as worker:
        await wait_until(lambda: order == ["first"], description="first job running")
        await work.with_options(priority="low").enqueue("low")
        await work.with_options(priority="high").enqueue("high")
        gate.set()
        await wait_until(lambda: len(order) == 3, description="all three jobs")
        assert worker.in_flight <= 1
    assert order == ["first", "high", "low"]


async def test_concurrency_bounds_running_handlers(app: App) -> None:
    running = 0
    peak = 0
    release = anyio.Event()

    @app.task
    async def hold() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    jobs = await hold.enqueue_many([()] * 10)
    async with running_worker(app, concurrency=3):
        await wait_until(lambda: running == 3, description="three handlers running")

        async def three_marked_running() -> bool:
            # The worker writes "running" marks lazily (within START_LINGER_S).
            return [await j.status() for j in jobs].count(JobStatus.RUNNING) == 3

        await wait_until(three_marked_running, 10, "three jobs marked running")
        assert [await j.status() for j in jobs].count(JobStatus.QUEUED) == 7
        release.set()
        for job in jobs:
            await job.result(timeout=10)
    assert peak == 3


async def test_a_blocked_job_never_holds_back_the_messages_fetched_with_it(app: App) -> None:
    """Runners wake one another (one woken runner at a time, not one per message):
    a runner wakes the next before it runs its job, so when each job blocks until
    the last one of its batch has started, all of them still run at once."""
    started = 0
    all_started = anyio.Event()

    @app.task
    async def rendezvous() -> None:
        nonlocal started
        started += 1
        if started == 6:
            all_started.set()
        await all_started.wait()

    jobs = await rendezvous.enqueue_many([()] * 6)
    async with running_worker(app, concurrency=6):
        for job in jobs:
            await job.result(timeout=10)


async def test_sync_handlers_run_in_worker_threads(app: App) -> None:
    loop_thread = threading.get_ident()

    @app.task
    def blocking(x: int) -> int:
        assert threading.get_ident() != loop_thread
        return x * 2

    jobs = await blocking.enqueue_many([(i,) for i in range(5)])
    async with running_worker(app, concurrency=5):
        assert [await j.result(timeout=10) for j in jobs] == [0, 2, 4, 6, 8]


async def test_success_acks_stores_result_and_records_events(redis_url: str) -> None:
    app = App(queue_name(), redis_url=redis_url, result_ttl=120)

    @app.task
    async def compute(x: int) -> dict[str, Any]:
        return {"square": x * x, "items": [1, "two", None]}

    async with app:
        job = await compute.enqueue(7)
        async with running_worker(app):
            assert await job.result(timeout=10) == {"square": 49, "items": [1, "two", None]}
        info = await job.info()
        assert info["status"] == "succeeded"
        assert info["attempts"] == "1"
        assert int(info["duration_ms"]) >= 0
        redis = await app.redis()
        assert 0 < await redis.ttl(app.keys.job(job.id)) <= 120
        assert await pending_count(app) == 0
        assert await event_kinds(app, job.id) == ["enqueued", "started", "succeeded"]
        await drop_queue(app)


async def test_failure_is_recorded_with_traceback_and_acked(app: App) -> None:
    @app.task(max_retries=0)
    async def broken(x: int) -> None:
        raise ValueError(f"bad input {x}")

    job = await broken.enqueue(3)
    async with running_worker(app):
        with pytest.raises(JobFailed) as info:
            await job.result(timeout=10)
    assert info.value.error_type == "ValueError"
    assert info.value.message == "bad input 3"
    assert "raise ValueError" in info.value.traceback
    assert await job.status() == JobStatus.FAILED
    assert await pending_count(app) == 0
    assert await event_kinds(app, job.id) == ["enqueued", "started", "failed"]


async def test_retries_up_to_max_retries_then_succeed(app: App) -> None:
    calls = 0

    @app.task(max_retries=2, backoff_base=0.01)
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("try again")
        return "finally"

    job = await flaky.enqueue()
    async with running_worker(app):
        assert await job.result(timeout=10) == "finally"
    info = await job.info()
    assert info["attempts"] == "3"
    kinds = await event_kinds(app, job.id)
    assert kinds.count("retried") == 2 and kinds[-1] == "succeeded"
    assert await pending_count(app) == 0


async def test_retries_spent_means_failed(app: App) -> None:
    calls = 0

    @app.task(max_retries=1, backoff_base=0.01)
    async def always() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("no")

    job = await always.enqueue()
    async with running_worker(app):
        assert await job.wait(timeout=10) == JobStatus.FAILED
    assert calls == 2
    assert (await job.info())["attempts"] == "2"


async def test_timeout_cancels_an_async_handler(app: App) -> None:
    cancelled = anyio.Event()

    @app.task(timeout=0.2, max_retries=0)
    async def hang() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    job = await hang.enqueue()
    async with running_worker(app):
        with pytest.raises(JobTimedOut, match="timeout"):
            await job.result(timeout=10)
    assert cancelled.is_set()


async def test_timed_out_sync_handler_is_told_and_keeps_its_slot(app: App) -> None:
    """A thread cannot be interrupted: past its timeout the handler is told
    (``current_job().stop_requested``), keeps its slot until it returns, and
    is then recorded as timed out; the other slot keeps serving meanwhile."""
    release = threading.Event()
    told = threading.Event()
    reasons: list[str] = []

    @app.task(timeout=0.2, max_retries=0)
    def stuck() -> None:
        while not release.wait(0.01):
            if current_job().stop_requested:
                reasons.append(current_job().stop_reason)
                told.set()
                return

    @app.task
    def quick() -> str:
        return "still serving"

    job = await stuck.enqueue()
    after = await quick.enqueue()
    try:
        async with running_worker(app, concurrency=2):
            with pytest.raises(JobTimedOut, match="returned after"):
                await job.result(timeout=10)
            assert told.is_set()
            assert reasons == ["ran past its timeout of 0.2 s"]
            assert await after.result(timeout=10) == "still serving"
    finally:
        release.set()


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
async def test_base_exceptions_from_a_handler_fail_the_job_not_the_worker(
    app: App, exc: BaseException
) -> None:
    @app.task(max_retries=0)
    async def rude() -> None:
        raise exc

    @app.task
    async def fine() -> str:
        return "ok"

    job = await rude.enqueue()
    async with running_worker(app):
        with pytest.raises(JobFailed) as info:
            await job.result(timeout=10)
        assert info.value.error_type == type(exc).__name__
        assert await (await fine.enqueue()).result(timeout=10) == "ok"


async def test_result_that_cannot_be_encoded_fails_without_retry(app: App) -> None:
    calls = 0

    @app.task(max_retries=3)
    async def returns_object() -> object:
        nonlocal calls
        calls += 1
        return object()

    job = await returns_object.enqueue()
    async with running_worker(app):
        with pytest.raises(JobFailed) as info:
            await job.result(timeout=10)
    assert info.value.error_type == "SerializationError"
    assert calls == 1


async def test_burst_worker_returns_once_the_queue_is_empty(app: App) -> None:
    @app.task(max_retries=1, backoff_base=0.01)
    async def flaky(n: int) -> int:
        if n % 3 == 0 and not flaky_seen.setdefault(n, False):
            flaky_seen[n] = True
            raise ValueError("first attempt fails")
        return n

    flaky_seen: dict[int, bool] = {}
    jobs = await flaky.enqueue_many([(i,) for i in range(30)])
    worker = Worker(app, concurrency=8, burst=True)
    with anyio.fail_after(30):
        await worker.run()
    # Retries are re-added when the failure is recorded; burst waits for them.
    assert [await j.result(timeout=1) for j in jobs] == list(range(30))
    assert worker.processed == 40


async def test_stop_before_run_fetches_nothing(app: App) -> None:
    @app.task
    async def f() -> None: ...

    job = await f.enqueue()
    worker = Worker(app)
    worker.stop()
    with anyio.fail_after(10):
        await worker.run()
    assert await job.status() == JobStatus.QUEUED
    assert await pending_count(app) == 0


@pytest.mark.parametrize(
    "options", [{"concurrency": 0}, {"grace_s": -1}, {"block_ms": 0}, {"block_ms": 60_000}]
)
def test_bad_worker_options(options: dict[str, Any]) -> None:
    app = App("q", redis_url="redis://127.0.0.1:1")
    with pytest.raises(ValueError):
        Worker(app, **options)


async def test_with_options_max_retries_and_timeout_apply_to_that_job(app: App) -> None:
    """Per-call options travel in the stream entry, so the worker honours them."""
    calls: dict[float, int] = {}

    @app.task(max_retries=3, timeout=30)
    async def slow_fail(sleep_s: float) -> None:
        calls[sleep_s] = calls.get(sleep_s, 0) + 1
        await anyio.sleep(sleep_s)
        raise ValueError("fails")

    no_retry = await slow_fail.with_options(max_retries=0).enqueue(0)
    short = await slow_fail.with_options(timeout=0.1, max_retries=0).enqueue(5)
    async with running_worker(app):
        with pytest.raises(JobFailed, match="ValueError"):
            await no_retry.result(timeout=10)
        with pytest.raises(JobTimedOut):
            await short.result(timeout=10)
    assert calls == {0: 1, 5: 1}
    redis = await app.redis()
    (_, first), (_, second) = await redis.xrange(app.keys.stream("default"))
    assert first[b"max_retries"] == b"0" and b"timeout" not in first
    assert second[b"timeout"] == b"0.1"


async def test_retry_waits_for_its_backoff_in_the_delayed_set(app: App) -> None:
    """A retry is not re-run at once: it waits in the delayed set until due."""
    calls = 0

    @app.task(max_retries=1, backoff_base=0.5, backoff_cap=0.5)
    async def once_more() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first attempt fails")
        return "second"

    job = await once_more.enqueue()
    redis = await app.redis()
    async with running_worker(app):

        async def retrying() -> bool:
            return await job.status() == JobStatus.RETRYING

        await wait_until(retrying, description="the job to wait for its retry")
        info = await job.info()
        assert int(info["due_ms"]) >= int(info["started_ms"])
        assert await redis.zcard(app.keys.delayed) == 1
        assert await job.result(timeout=10) == "second"
    assert await redis.zcard(app.keys.delayed) == 0
    kinds = await event_kinds(app, job.id)
    assert kinds == ["enqueued", "started", "retried", "promoted", "started", "succeeded"]


async def test_retry_on_and_retry_exception(app: App) -> None:
    from streamq.retry import Retry

    calls: dict[str, int] = {"typed": 0, "asked": 0}

    @app.task(max_retries=3, retry_on=(ConnectionError,), backoff_base=0.01)
    async def typed() -> None:
        calls["typed"] += 1
        raise KeyError("not retried: not a ConnectionError")

    @app.task(max_retries=3, retry_on=(ConnectionError,))
    async def asked() -> str:
        calls["asked"] += 1
        if calls["asked"] < 3:
            raise Retry(delay=0.01)
        return "third time"

    first, second = await typed.enqueue(), await asked.enqueue()
    async with running_worker(app):
        assert await first.wait(timeout=10) == JobStatus.FAILED
        assert await second.result(timeout=10) == "third time"
    assert calls == {"typed": 1, "asked": 3}


async def test_app_default_timeout_bounds_a_handler_that_hangs_forever(redis_url: str) -> None:
    """A handler with no timeout of its own still cannot hold a slot forever."""
    app = App(queue_name(), redis_url=redis_url, settings=Settings(task_timeout_s=0.2))

    @app.task(max_retries=0)
    async def hangs() -> None:
        await anyio.sleep_forever()

    async with app:
        job = await hangs.enqueue()
        async with running_worker(app):
            with pytest.raises(JobTimedOut):
                await job.result(timeout=10)
        await drop_queue(app)


async def test_a_timeout_error_raised_by_the_handler_is_its_own_failure(app: App) -> None:
    """Regression: the worker took any TimeoutError for its own timeout, so a socket
    timeout inside a handler lost its traceback and ignored retry_on. Now only the
    worker's own deadline makes a JobTimedOut."""

    @app.task(retry_on=(ConnectionError,), backoff_base=0.01)
    async def reads_socket() -> None:
        raise TimeoutError("socket read timed out")

    job = await reads_socket.enqueue()
    async with running_worker(app):
        with pytest.raises(JobFailed) as info:
            await job.result(timeout=10)
    assert not isinstance(info.value, JobTimedOut)
    assert info.value.error_type == "TimeoutError"
    assert "socket read timed out" in info.value.traceback
    assert (await job.info())["attempts"] == "1"


async def test_a_cancelled_worker_gives_its_held_connections_back(app: App) -> None:
    """Cancelling ``Worker.run`` (not ``stop()``) still returns the fetch loop's and
    the writer's connections to the pool: redis-py's own exit skips its close when
    cancelled, and the clients were left to the garbage collector (a ResourceWarning)."""

    @app.task(name="t")
    async def t() -> None:
        return None

    pool = (await app.redis()).connection_pool
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with anyio.create_task_group() as tg:
            worker = Worker(app, concurrency=1, handle_signals=False)
            await tg.start(worker.run)
            await (await t.enqueue()).result(timeout=10)
            tg.cancel_scope.cancel()
        del worker, tg
        gc.collect()
    assert not [w for w in caught if "Unclosed client" in str(w.message)]
    assert pool.can_get_connection()


async def test_a_wait_with_no_time_left_does_not_block_for_the_whole_block(app: App) -> None:
    """The worker asks ``wait`` to return by its next reclaim pass; with 0 ms left
    it must not block for the whole ``block_ms`` (``0 or block_ms`` did)."""
    fetcher = Fetcher(
        await app.redis(), await app.scripts(), app.keys, app.settings, "worker-a", 60_000
    )
    await fetcher.ensure_groups()
    with anyio.fail_after(30):  # half the block: no machine is that slow for a 1 ms block
        assert await fetcher.wait(10, 0) == ([], False)
