"""``streamq worker`` as a real process: graceful shutdown, bad input, URL choice.

Each test runs ``python -m streamq worker tests.apps.slow:app`` against the
session valkey-server on its own queue (``$STREAMQ_TEST_QUEUE``), enqueues
from the test's own App with the same task names, and signals the child the
way a process manager would. Nothing is mocked: the PEL, job hashes and exit
codes are read back from Redis and the operating system.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from redis.asyncio import Redis

from streamq import App, Job, JobStatus, embedded
from streamq.cli import EXIT_UNREACHABLE, EXIT_USAGE, main
from streamq.keys import GROUP
from tests.apps.process import streamq_child
from tests.apps.slow import ADD, SLEEP, register
from tests.conftest import subprocess_env, wait_until

pytestmark = pytest.mark.anyio

APP_PATH = "tests.apps.slow:app"
START_TIMEOUT_S = 20.0  # interpreter start + imports on a loaded 2-core machine


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """``main()`` in-process configures structlog for the CLI; undo it for later tests."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


async def statuses(jobs: list[Job[Any]]) -> list[JobStatus]:
    return [await job.status() for job in jobs]


async def pending_entry(app: App, job: Job[Any]) -> list[Any]:
    """The job's current message in the group's PEL ([] when not pending)."""
    redis = await app.redis()
    info = await job.info()
    stream = app.keys.stream(info["priority"])
    return cast(
        list[Any],
        await redis.xpending_range(stream, GROUP, min=info["msg_id"], max=info["msg_id"], count=1),
    )


async def pending_count(app: App) -> int:
    redis: Redis = await app.redis()
    total = 0
    for priority in app.settings.priorities:
        summary = await redis.xpending(app.keys.stream(priority), GROUP)
        total += int(summary["pending"])
    return total


def worker_args(*options: str) -> list[str]:
    return ["worker", APP_PATH, *options]


async def test_sigterm_lets_in_flight_jobs_finish_and_fetches_nothing_more(
    app: App, redis_url: str
) -> None:
    """Invariant 8: SIGTERM stops fetching, in-flight jobs finish, the rest stay queued.

    Six 1.5 s jobs, concurrency 4: four run when SIGTERM arrives, two more
    are enqueued after it. The worker exits 0 once the four have succeeded;
    the other four are still ``queued`` and in no consumer's PEL. Without the
    stop, the worker would fetch the waiting jobs as soon as slots free up;
    without the grace period, the four would be cancelled instead of succeeding.
    """
    register(app)
    early = [await app.enqueue(SLEEP, 1.5) for _ in range(6)]
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name)
    async with streamq_child(worker_args("--concurrency", "4", "--grace", "20"), env) as child:

        async def four_running() -> bool:
            return (await statuses(early)).count(JobStatus.RUNNING) == 4

        await wait_until(four_running, START_TIMEOUT_S, "four jobs running")
        child.signal(signal.SIGTERM)
        late = [await app.enqueue(SLEEP, 0.01) for _ in range(2)]
        code = await child.wait(timeout_s=20)
    assert code == 0, child.output()
    records = child.records()
    assert [r["event"] for r in records].count("job succeeded") == 4
    assert [r["processed"] for r in records if r["event"] == "worker stopped"] == [4]
    final = await statuses(early)
    assert sorted(final) == sorted([JobStatus.SUCCEEDED] * 4 + [JobStatus.QUEUED] * 2)
    left = [job for job, status in zip(early, final, strict=True) if status == "queued"] + late
    assert await statuses(left) == [JobStatus.QUEUED] * 4
    for job in left:
        assert await pending_entry(app, job) == [], f"{job} was fetched after SIGTERM"
    assert await pending_count(app) == 0


async def test_grace_shorter_than_the_job_leaves_it_pending(app: App, redis_url: str) -> None:
    """Invariant 8, nothing acked that did not run: a job cut off by the grace stays pending.

    A 20 s job, ``--grace 0.5``, SIGTERM while it runs: the worker exits 0
    long before the job could end, the job is not succeeded (nor failed),
    and its message is still in the group's PEL for a reclaim. A worker that
    acked or recorded a cancelled handler would leave PEL count 0.
    """
    register(app)
    job = await app.enqueue(SLEEP, 20)
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name)
    async with streamq_child(worker_args("--concurrency", "2", "--grace", "0.5"), env) as child:

        async def running() -> bool:
            return await job.status() == JobStatus.RUNNING

        await wait_until(running, START_TIMEOUT_S, "the job running")
        sent = time.monotonic()
        child.signal(signal.SIGTERM)
        code = await child.wait(timeout_s=10)
        elapsed_s = time.monotonic() - sent
    assert code == 0, child.output()
    assert elapsed_s < 5, "the grace period was not applied"
    assert "job succeeded" not in [record["event"] for record in child.records()]
    assert await job.status() == JobStatus.RUNNING
    (entry,) = await pending_entry(app, job)
    assert entry["message_id"].decode() == (await job.info())["msg_id"]
    assert await pending_count(app) == 1


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_second_signal_during_grace_stops_at_once(
    app: App, redis_url: str, second: signal.Signals
) -> None:
    """A second signal ends the grace period at once, still acking nothing unfinished.

    With ``--grace 60`` and a 20 s job, the first SIGTERM starts a grace that
    would outlast the job; the second signal must stop the worker within a
    few seconds (exit 128 + the signal, never 0), the job left running in the PEL. Without the
    second-signal handling the child would run for the full 20 s.
    """
    register(app)
    job = await app.enqueue(SLEEP, 20)
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name)
    async with streamq_child(worker_args("--grace", "60"), env) as child:

        async def running() -> bool:
            return await job.status() == JobStatus.RUNNING

        await wait_until(running, START_TIMEOUT_S, "the job running")
        child.signal(signal.SIGTERM)
        await child.wait_for_line(
            lambda line: '"signal: finishing in-flight jobs"' in line, 10, "acknowledging SIGTERM"
        )
        sent = time.monotonic()
        child.signal(second)
        code = await child.wait(timeout_s=10)
        elapsed_s = time.monotonic() - sent
    assert code == 128 + second, child.output()
    assert elapsed_s < 5
    events = [record["event"] for record in child.records()]
    assert "second signal: stopping now" in events
    assert "job succeeded" not in events
    assert await job.status() == JobStatus.RUNNING
    assert len(await pending_entry(app, job)) == 1


def flat(text: str) -> str:
    """CLI error text without rich's box drawing and line wrapping."""
    return re.sub(r"\s+", " ", re.sub(r"[╭╮╰╯│─]", " ", text)).strip()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_module_xyz:app"], "cannot import 'no_such_module_xyz'"),
        (["tests.apps.slow:register"], "tests.apps.slow:register is function, not a streamq App"),
        (["tests.apps.slow:SLEEP"], "tests.apps.slow:SLEEP is str, not a streamq App"),
        (["tests.apps.slow:no_such_attr"], "has no attribute 'no_such_attr'"),
        ([APP_PATH, "--concurrency", "0"], "--concurrency"),
        ([APP_PATH, "--grace", "-1"], "--grace"),
        ([APP_PATH, "--log-level", "loud"], "unknown level 'loud'"),
    ],
    ids=["unknown-module", "not-an-app", "a-string", "missing-attr", "concurrency-0",
         "negative-grace", "bad-level"],
)  # fmt: skip
def test_bad_input_exits_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad usage is exit code 2 (documented in streamq.cli) and says what is wrong.

    The worker never starts and no server is contacted: the checks sit at the
    boundary, before any connection (STREAMQ_REDIS_URL is unset and no
    embedded server may be started, which the missing socket afterwards shows).
    """
    assert main(["worker", *args]) == EXIT_USAGE
    err = flat(capsys.readouterr().err)
    assert message in err, err
    assert "Usage: streamq worker" in err
    assert not embedded.socket_path(embedded.data_dir()).exists()


async def test_redis_url_flag_overrides_the_environment(
    app: App, redis_url: str, tmp_path: Path
) -> None:
    """``--redis-url`` wins over ``$STREAMQ_REDIS_URL``; ``--burst`` exits 0 on an empty queue.

    The environment points at a socket where nothing listens; with the flag
    naming the real server the worker drains the queued job and exits 0 by
    itself. If the environment won, the worker could not connect (exit 3);
    if ``--burst`` did not end the run, the child would outlive the deadline.
    """
    register(app)
    jobs = [await app.enqueue(ADD, 2, 3), await app.enqueue(ADD, 4, 5)]
    env = subprocess_env(f"unix://{tmp_path}/nobody.sock", STREAMQ_TEST_QUEUE=app.name)
    async with streamq_child(worker_args("--burst", "--redis-url", redis_url), env) as child:
        code = await child.wait(timeout_s=30)
    assert code == 0, child.output()
    assert [await job.result(timeout=1) for job in jobs] == [5, 9]
    assert await pending_count(app) == 0


async def test_unreachable_environment_url_exits_3(app: App, tmp_path: Path) -> None:
    """``$STREAMQ_REDIS_URL`` is used when no flag is given: a dead server is exit 3.

    The counterpart of the override test: it shows the environment variable
    is read at all (so the override test is not passing by ignoring it), and
    that an unreachable server is reported as such, not as a crash.
    """
    env = subprocess_env(f"unix://{tmp_path}/nobody.sock", STREAMQ_TEST_QUEUE=app.name)
    async with streamq_child(worker_args("--burst"), env) as child:
        code = await child.wait(timeout_s=60)
    assert code == EXIT_UNREACHABLE, child.output()
    assert "nobody.sock" in "\n".join(child.stderr), child.output()
