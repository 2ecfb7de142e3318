"""Chains: a child job runs once its parents succeeded, and dies naming a failed parent."""

from __future__ import annotations

import pytest

from streamq import App, ConfigError, JobNotFound, JobStatus, Settings
from streamq.dlq import DeadLetters
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fast(redis_url: str) -> App:
    """A queue whose janitor passes every 0.05 s (chained jobs are released by it)."""
    settings = Settings(redis_url=redis_url, janitor_interval_s=0.05)
    application = App(queue_name(), settings=settings)
    async with application:
        yield application  # type: ignore[misc]
        await drop_queue(application)


async def test_a_child_waits_deferred_until_its_parents_succeed(fast: App) -> None:
    order: list[str] = []

    @fast.task
    async def step(name: str) -> str:
        order.append(name)
        return name

    a = await step.enqueue("a")
    b = await step.enqueue("b")
    child = await step.with_options(after=[a, b.id]).enqueue("child")
    assert await child.status() == JobStatus.DEFERRED
    redis = await fast.redis()
    assert sum([await redis.xlen(s) for s in fast.streams]) == 2  # the child is not in a stream
    async with running_worker(fast):
        assert await child.result(timeout=10) == "child"
    assert order[-1] == "child" and set(order[:2]) == {"a", "b"}
    kinds = [kind for _, kind in await child.event_ids()]
    assert kinds[:2] == ["deferred", "released"] and kinds[-1] == "succeeded"
    # Nothing is left waiting: the deferred hash, the parents zset, the children sets.
    assert not await redis.exists(fast.keys.deferred, fast.keys.parents)
    assert not await redis.exists(fast.keys.children(a.id), fast.keys.children(b.id))


async def test_a_child_whose_parent_fails_goes_to_the_dlq_naming_it(fast: App) -> None:
    ran: list[str] = []

    @fast.task(max_retries=0)
    async def parent() -> None:
        raise RuntimeError("no")

    @fast.task
    async def child(n: int) -> None:
        ran.append("child")

    failing = await parent.enqueue()
    waiting = await child.with_options(after=[failing]).enqueue(1)
    async with running_worker(fast):
        await wait_until(
            lambda: _status_is(waiting.id, fast, "dead"), description="the child dead-lettered"
        )
    assert ran == []
    info = await waiting.info()
    assert info["error_type"] == "ParentFailed"
    assert failing.id in info["error"] and "failed" in info["error"]
    entries = [e async for e in DeadLetters(fast).iter()]
    (dead,) = [e for e in entries if e.job_id == waiting.id]
    assert failing.id in dead.reason
    # The DLQ entry is a whole job: requeued after a fix, it runs.
    assert dead.task == child.name
    await DeadLetters(fast).requeue(dead.id)
    async with running_worker(fast):
        await wait_until(lambda: ran == ["child"], description="the requeued child ran")


async def _status_is(job_id: str, app: App, status: str) -> bool:
    return (await app.job(job_id).info()).get("status") == status


async def test_parents_already_final_decide_at_enqueue(fast: App) -> None:
    @fast.task(max_retries=0)
    async def work(ok: bool) -> bool:
        if not ok:
            raise RuntimeError("bad")
        return ok

    good = await work.enqueue(True)
    bad = await work.enqueue(False)
    async with running_worker(fast, janitor=False):
        await good.wait(timeout=10)
        await bad.wait(timeout=10)
    ready = await work.with_options(after=[good]).enqueue(True)
    assert await ready.status() == JobStatus.QUEUED  # no janitor pass needed
    doomed = await work.with_options(after=[good, bad]).enqueue(True)
    assert await doomed.status() == JobStatus.DEAD
    async with running_worker(fast, janitor=False):
        assert await ready.result(timeout=10) is True


async def test_an_unknown_parent_is_refused_and_nothing_is_written(fast: App) -> None:
    @fast.task
    async def work() -> None: ...

    with pytest.raises(JobNotFound, match="nope"):
        await work.with_options(after=["nope"]).enqueue()
    redis = await fast.redis()
    assert [k async for k in redis.scan_iter(match=fast.keys.pattern())] == []


async def test_a_child_waits_for_every_parent(fast: App) -> None:
    @fast.task
    async def work(n: int) -> int:
        return n

    first = await work.enqueue(1)
    later = await work.enqueue_in(0.5, 2)
    child = await work.with_options(after=[first, later]).enqueue(3)
    async with running_worker(fast):
        await first.result(timeout=10)
        assert await child.status() == JobStatus.DEFERRED  # the second parent is not done
        assert await child.result(timeout=10) == 3
    assert await later.status() == JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("after", "message"),
    [("job-id", "list of jobs"), ([], "at least one"), ([""], "non-empty")],
)
async def test_bad_parents_are_config_errors(app: App, after: object, message: str) -> None:
    @app.task
    async def work() -> None: ...

    with pytest.raises(ConfigError, match=message):
        work.with_options(after=after)  # type: ignore[arg-type]


async def test_a_chained_job_cannot_also_be_delayed_or_unique(app: App) -> None:
    @app.task
    async def work() -> None: ...

    parent = await work.enqueue()
    with pytest.raises(ConfigError, match="cannot be unique or delayed"):
        await work.with_options(after=[parent]).enqueue_in(5)
    with pytest.raises(ConfigError, match="cannot be unique or delayed"):
        await work.with_options(after=[parent], key="k").enqueue()
    async with running_worker(app):
        await parent.wait(timeout=10)


async def test_cancelling_a_waiting_child_or_its_parent(fast: App) -> None:
    """A cancelled child never runs; a cancelled parent sends its children to the DLQ."""
    ran: list[int] = []

    @fast.task
    async def work(n: int) -> int:
        ran.append(n)
        return n

    parent = await work.enqueue_in(60, 1)
    child = await work.with_options(after=[parent]).enqueue(2)
    orphan = await work.with_options(after=[parent]).enqueue(3)
    assert (await child.cancel()).value == "cancelled"
    assert await child.status() == JobStatus.CANCELLED
    assert (await parent.cancel()).value == "cancelled"
    async with running_worker(fast):
        await wait_until(
            lambda: _status_is(orphan.id, fast, "dead"), description="the orphan dead-lettered"
        )
    assert "ended cancelled" in (await orphan.info())["error"]
    assert ran == []
    assert await child.status() == JobStatus.CANCELLED
    redis = await fast.redis()
    assert not await redis.exists(fast.keys.deferred, fast.keys.parents)


async def test_run_until_idle_runs_a_chain_to_its_end(redis_url: str) -> None:
    """The testing helper releases children itself: a whole chain runs in one call,
    even with a janitor that would pass only once a minute."""
    from streamq.testing import run_until_idle

    app = App(queue_name(), settings=Settings(redis_url=redis_url, janitor_interval_s=60))
    async with app:

        @app.task
        async def step(n: int) -> int:
            return n

        first = await step.enqueue(1)
        second = await step.with_options(after=[first]).enqueue(2)
        third = await step.with_options(after=[second]).enqueue(3)
        await run_until_idle(app, timeout=20)
        assert await third.result(timeout=1) == 3
        await drop_queue(app)


async def test_a_parents_worker_releases_its_children_without_the_janitor(redis_url: str) -> None:
    """No janitor runs here: the worker that records a parent's outcome settles
    the children waiting for it, so a chain runs link after link at once (a
    child used to wait for the janitor's next pass), and a child whose parent
    failed goes to the DLQ naming it."""
    async with App(queue_name(), redis_url=redis_url) as app:

        @app.task
        async def step(name: str) -> str:
            return name

        @app.task(max_retries=0)
        async def broken() -> None:
            raise RuntimeError("no")

        a = await step.enqueue("a")
        b = await step.with_options(after=[a]).enqueue("b")
        c = await step.with_options(after=[b]).enqueue("c")
        failing = await broken.enqueue()
        orphan = await step.with_options(after=[failing]).enqueue("orphan")
        async with running_worker(app, janitor=False):
            assert await c.result(timeout=30) == "c"
            assert await orphan.wait(timeout=30) == JobStatus.DEAD
        (entry,) = [e for e in await DeadLetters(app).entries() if e.job_id == orphan.id]
        assert failing.id in entry.reason
        await drop_queue(app)
