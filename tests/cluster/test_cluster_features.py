"""Every feature on a real 3-master cluster: the reliability paths, the audit
story, the operator tools, and a SIGKILLed worker's job reclaimed.

Each test's queue lands on whichever master its random name hashes to; the
five-queue test (test_cluster_core.py) makes sure every master is used.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import pytest

from streamq import App, JobFailed, JobStatus, Settings
from streamq.dlq import DeadLetters
from streamq.doctor import Status, run_checks
from streamq.janitor import Janitor
from streamq.limits import Limit
from streamq.replay import Replay
from streamq.stats import collect
from tests.apps.process import streamq_child
from tests.apps.slow import ADD, SLEEP, register
from tests.conftest import (
    assert_no_key_leak,
    bound_lost_jobs,
    queue_name,
    running_worker,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fast(cluster_url: str) -> AsyncIterator[App]:
    settings = Settings(janitor_interval_s=0.2, visibility_timeout_s=1.0)
    application = App(queue_name(), redis_url=cluster_url, settings=settings)
    async with application:
        yield application
        await assert_no_key_leak(application)


async def test_retries_delay_dlq_and_requeue(fast: App) -> None:
    fixed = False
    tries: list[int] = []

    @fast.task(name="flaky", max_retries=2, backoff_base=0.05)
    async def flaky(n: int) -> int:
        tries.append(n)
        if not fixed:
            raise RuntimeError("not yet")
        return n

    @fast.task(name="later")
    async def later() -> str:
        return "due"

    delayed = await later.enqueue_in(0.3)
    assert await delayed.status() == JobStatus.SCHEDULED
    job = await flaky.enqueue(7)
    dlq = DeadLetters(fast)
    async with running_worker(fast):
        assert await delayed.result(timeout=10) == "due"
        with pytest.raises(JobFailed):
            await job.result(timeout=10)
        assert len(tries) == 3  # the first run and two retries through the delayed set
        (letter,) = await dlq.entries()
        assert letter.job_id == job.id and letter.reason == "failed: RuntimeError"
        fixed = True
        assert await dlq.requeue(letter.id) == job.id
        assert await job.result(timeout=10) == 7
    assert await dlq.count() == 0


async def test_the_story_stats_and_doctor_of_a_queue(fast: App, cluster_url: str) -> None:
    @fast.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    jobs = await add.enqueue_many([(n, n) for n in range(150)])  # pipelined script calls
    async with running_worker(fast):
        assert [await job.result(timeout=10) for job in jobs[:3]] == [0, 2, 4]
        await wait_until(lambda: all_done(jobs), description="every job done")
    story = [record.kind for record in await Replay(fast).story(jobs[1].id)]
    assert story[-1] == "succeeded" and {"enqueued", "started"} <= set(story), story
    stats = await collect(fast)
    assert stats.pending == 0 and stats.dlq == 0
    assert stats.throughput.succeeded >= 150
    checks = {check.name: check for check in await run_checks(fast)}
    cluster = checks["cluster"]
    router = await fast.redis()
    node = router.get_node_from_key(fast.keys.events)  # type: ignore[attr-defined]
    assert cluster.status is Status.OK, cluster
    assert "cluster_state:ok, 3 masters" in cluster.detail
    assert f"slot {router.keyslot(fast.keys.events)}" in cluster.detail  # type: ignore[attr-defined]
    assert node.name in cluster.detail
    keys = checks["keys"]  # SCANned on the master holding the queue
    assert keys.status is Status.OK and not keys.detail.startswith("0 keys"), keys
    assert [c for c in checks.values() if c.status is Status.PROBLEM] == []


async def all_done(jobs: list[object]) -> bool:
    return all([await job.status() == JobStatus.SUCCEEDED for job in jobs])  # type: ignore[attr-defined]


async def test_a_plain_client_on_a_cluster_node_is_reported_not_ok(cluster_url: str) -> None:
    """The issue's false ok: a redis:// URL of one node passed doctor's cluster check."""
    node_url = cluster_url.replace("redis+cluster://", "redis://")
    async with App(queue_name(), redis_url=node_url) as plain:
        checks = {check.name: check for check in await run_checks(plain)}
    assert checks["cluster"].status is Status.PROBLEM
    assert "redis+cluster://" in checks["cluster"].fix


async def test_unique_chains_cancel_and_limits(fast: App) -> None:
    ran: list[str] = []

    @fast.task(name="step", limit=Limit(concurrency=1))
    async def step(name: str) -> str:
        ran.append(name)
        return name

    first = await step.with_options(key="k-1").enqueue("unique")
    assert (await step.with_options(key="k-1").enqueue("again")).id == first.id
    child = await step.with_options(after=[first]).enqueue("child")
    assert await child.status() != JobStatus.QUEUED  # deferred behind its parent
    doomed = await step.enqueue("cancelled")
    await doomed.cancel()
    async with running_worker(fast):
        assert await child.result(timeout=10) == "child"
    assert ran == ["unique", "child"]
    assert await doomed.status() == JobStatus.CANCELLED
    # The key of the finished job gets its TTL at the janitor's next sweep (the
    # worker's first pass may have run before the job finished): sweep it all now.
    janitor = Janitor(fast, "test")
    await janitor.sweep_unique_keys()
    while janitor._unique_cursor:
        await janitor.sweep_unique_keys()


async def test_a_sigkilled_workers_job_is_reclaimed(fast: App, cluster_url: str) -> None:
    register(fast)
    env = subprocess_env(cluster_url, STREAMQ_TEST_QUEUE=fast.name, STREAMQ_VISIBILITY_TIMEOUT="1")
    job = await fast.tasks[SLEEP].enqueue(2.0)
    quick = await fast.tasks[ADD].enqueue(1, 2)
    async with streamq_child(["worker", "tests.apps.slow:app", "--concurrency", "1"], env) as child:
        await wait_until(
            lambda: status_is(job, JobStatus.RUNNING), timeout=30, description="the child runs it"
        )
        child_worker = (await job.info())["worker"]
        child.signal(signal.SIGKILL)
        assert await child.wait(10) == -signal.SIGKILL
    async with running_worker(fast):
        assert await job.result(timeout=20) == 2.0
        assert await quick.result(timeout=10) == 3
    story = [record.kind for record in await Replay(fast).story(job.id)]
    assert story.count("started") == 2 and "reclaimed" in story, story
    assert (await job.info())["worker"] != child_worker
    assert await bound_lost_jobs(fast) == []


async def status_is(job: object, status: JobStatus) -> bool:
    return await job.status() == status  # type: ignore[attr-defined]


async def test_scripts_flushed_on_the_queues_master_are_loaded_again(fast: App) -> None:
    """NOSCRIPT comes from the master owning the queue's slot; SCRIPT LOAD reaches it."""

    @fast.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    node = await fast.node_redis()
    await node.script_flush()
    one = await add.enqueue(1, 1)  # one script call
    await node.script_flush()
    many = await add.enqueue_many([(n, 1) for n in range(3)])  # a pipeline of calls
    await node.script_flush()
    async with running_worker(fast):
        assert await one.result(timeout=10) == 2
        assert [await job.result(timeout=10) for job in many] == [1, 2, 3]
