"""``streamq worker APP --processes N``: N worker processes under one supervisor.

Each test runs the real command as a child process (``python -m streamq
worker ... --processes N``) against the session valkey-server, on its own
queue, and reads back what the supervisor and its children did: their JSON
log lines (one shared stdout), the consumer group (XINFO CONSUMERS), the job
hashes, the exit codes, and the metrics endpoint. Children are named with
``--name`` so a test can tell them apart: child *i* is ``<name>-<i>``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from redis.exceptions import ResponseError

from streamq import App, Job, JobStatus
from streamq.cli import EXIT_USAGE, main
from streamq.keys import GROUP
from streamq.supervisor import MAX_FAILED_STARTS
from tests.apps import deaf, hostile
from tests.apps.process import Child, streamq_child
from tests.apps.slow import ADD, SLEEP, register
from tests.conftest import subprocess_env, wait_until
from tests.servers import free_port
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.anyio

APP_PATH = "tests.apps.slow:app"
START_TIMEOUT_S = 40.0  # several interpreters starting at once on a loaded 2-core machine


@asynccontextmanager
async def supervisor(
    app: App, redis_url: str, args: Sequence[str], app_path: str = APP_PATH, **env: str
) -> AsyncIterator[Child]:
    """``streamq worker app_path *args`` on the test's queue.

    On the way out a supervisor still running gets SIGTERM first, so a
    failing test does not leave its children behind (they would stop by
    themselves after the SIGKILL that ``streamq_child`` sends, a bit later).
    """
    environment = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name, **env)
    async with streamq_child(["worker", app_path, *args], environment) as child:
        try:
            yield child
        finally:
            if child.process.returncode is None:
                child.signal(signal.SIGTERM)
                with anyio.move_on_after(20):
                    await child.process.wait()


def events(child: Child, event: str) -> list[dict[str, Any]]:
    return [record for record in child.records() if record["event"] == event]


def started_pids(child: Child, slot: int) -> list[int]:
    return [int(r["pid"]) for r in events(child, "worker process started") if r["slot"] == slot]


async def consumers(app: App) -> set[str]:
    """Consumer names of the queue's group, over every priority stream."""
    redis = await app.redis()
    names: set[str] = set()
    for priority in app.settings.priorities:
        try:
            found = await redis.xinfo_consumers(app.keys.stream(priority), GROUP)
        except ResponseError:  # no group yet
            continue
        names.update(c["name"].decode() for c in found)
    return names


async def wait_for_consumers(app: App, names: set[str]) -> None:
    async def joined() -> bool:
        return names <= await consumers(app)

    await wait_until(joined, START_TIMEOUT_S, f"consumers {sorted(names)} in the group")


async def wait_running(jobs: Sequence[Job[Any]]) -> None:
    async def running() -> bool:
        return all([await job.status() == JobStatus.RUNNING for job in jobs])

    await wait_until(running, 20, f"{len(jobs)} jobs running")


async def workers_of(jobs: Sequence[Job[Any]]) -> list[str]:
    return [(await job.info())["worker"] for job in jobs]


async def test_each_process_is_its_own_consumer_running_jobs(app: App, redis_url: str) -> None:
    """Three processes join the group as three consumers and run three jobs at once.

    With ``--concurrency 1`` a process holds one job at a time, so three
    5 s jobs running together are in three processes: their ``worker``
    fields are the three children's names, which XINFO CONSUMERS lists.
    """
    register(app)
    names = {"c-0", "c-1", "c-2"}
    args = ["--processes", "3", "--concurrency", "1", "--name", "c"]
    async with supervisor(app, redis_url, args) as sup:
        await wait_for_consumers(app, names)
        jobs = [await app.enqueue(SLEEP, 5.0) for _ in range(3)]
        await wait_running(jobs)
        assert sorted(await workers_of(jobs)) == sorted(names)
        assert [await job.result(timeout=30) for job in jobs] == [5.0] * 3
        sup.signal(signal.SIGTERM)
        code = await sup.wait(timeout_s=30)
    assert code == 0, sup.output()
    started = events(sup, "worker process started")
    assert sorted(r["name"] for r in started) == sorted(names)
    assert len({r["pid"] for r in started}) == 3
    assert {r["worker"] for r in events(sup, "worker started")} == names
    assert [r["exit_code"] for r in events(sup, "supervisor stopped")] == [0]


async def test_a_killed_process_is_restarted_and_finishes_its_job(app: App, redis_url: str) -> None:
    """SIGKILL one child mid-job: it is restarted under its name and runs that job again.

    The restarted child reuses the consumer name, so it drains its own
    pending message first: the job succeeds on that name long before the
    visibility timeout (300 s) would let the other child reclaim it. The
    supervisor logs the exit (code 137) and the restart; later jobs run too.
    """
    register(app)
    args = ["--processes", "2", "--concurrency", "1", "--name", "k"]
    async with supervisor(app, redis_url, args) as sup:
        await wait_for_consumers(app, {"k-0", "k-1"})
        job = await app.enqueue(SLEEP, 2.0)
        await wait_running([job])
        (name,) = await workers_of([job])
        slot = int(name.rsplit("-", 1)[1])
        (old_pid,) = started_pids(sup, slot)
        os.kill(old_pid, signal.SIGKILL)
        await wait_until(lambda: len(started_pids(sup, slot)) == 2, 30, "the child restarted")
        assert await job.result(timeout=30) == 2.0
        assert (await job.info())["worker"] == name
        more = [await app.enqueue(ADD, i, 1) for i in range(4)]
        assert [await later.result(timeout=20) for later in more] == [1, 2, 3, 4]
        sup.signal(signal.SIGTERM)
        code = await sup.wait(timeout_s=30)
    assert code == 0, sup.output()
    (restart,) = events(sup, "worker process exited; restarting")
    assert (restart["slot"], restart["pid"], restart["exit_code"]) == (slot, old_pid, 137)
    new_pid = started_pids(sup, slot)[1]
    assert new_pid != old_pid
    assert len(started_pids(sup, 1 - slot)) == 1


async def test_sigterm_reaches_every_process_and_in_flight_jobs_finish(
    app: App, redis_url: str
) -> None:
    """One SIGTERM to the supervisor: every child finishes its jobs within the grace, exit 0.

    Four 1.5 s jobs on two processes of concurrency 2 (so both hold two).
    Each child logs the signal; the four jobs succeed; jobs enqueued after
    both children stopped fetching stay queued, in no consumer's PEL.
    """
    register(app)
    args = ["--processes", "2", "--concurrency", "2", "--grace", "20", "--name", "s"]
    async with supervisor(app, redis_url, args) as sup:
        await wait_for_consumers(app, {"s-0", "s-1"})
        jobs = [await app.enqueue(SLEEP, 1.5) for _ in range(4)]
        await wait_running(jobs)
        assert sorted(await workers_of(jobs)) == ["s-0", "s-0", "s-1", "s-1"]
        sup.signal(signal.SIGTERM)

        def both_signalled() -> bool:
            return len(events(sup, "signal: finishing in-flight jobs")) == 2

        await wait_until(both_signalled, 10, "both children to take the signal")
        late = [await app.enqueue(ADD, 1, 1) for _ in range(2)]
        code = await sup.wait(timeout_s=30)
    assert code == 0, sup.output()
    assert [await job.status() for job in jobs] == [JobStatus.SUCCEEDED] * 4
    assert [await job.status() for job in late] == [JobStatus.QUEUED] * 2
    redis = await app.redis()
    assert int((await redis.xpending(app.keys.stream("default"), GROUP))["pending"]) == 0
    assert {r["worker"] for r in events(sup, "signal: finishing in-flight jobs")} == {"s-0", "s-1"}
    assert len(events(sup, "signal: stopping worker processes")) == 1
    assert events(sup, "worker process exited; restarting") == []
    assert sorted(r["processed"] for r in events(sup, "worker stopped")) == [2, 2]


@pytest.mark.parametrize(
    ("app_path", "code", "message"),
    [
        ("no_such_module_xyz:app", EXIT_USAGE, "cannot import 'no_such_module_xyz'"),
        ("tests.apps.broken:app", 1, "tests.apps.broken fails at import on purpose"),
    ],
    ids=["unknown-module", "raises-at-import"],
)
async def test_an_app_that_cannot_load_fails_the_supervisor_at_once(
    app: App, redis_url: str, app_path: str, code: int, message: str
) -> None:
    """Children that die before their worker ever ran end the supervisor, with their code.

    No restart loop: three children started, none again; the child's own
    error reaches stderr.
    """
    async with supervisor(app, redis_url, ["--processes", "3"], app_path=app_path) as sup:
        exit_code = await sup.wait(timeout_s=60)
    assert exit_code == code, sup.output()
    assert len(events(sup, "worker process started")) == 3
    (failed,) = events(sup, "worker process failed to start")
    assert failed["exit_code"] == code
    assert events(sup, "worker process exited; restarting") == []
    assert message in "\n".join(sup.stderr)


async def test_a_process_that_keeps_failing_to_start_ends_the_supervisor(
    app: App, redis_url: str, tmp_path: Path
) -> None:
    """After the App loaded once, a child that cannot start again gets a few tries, no more.

    Both children start; then the module breaks (as after a bad deploy) and
    one child is killed. Its restarts die at import (exit 1), each after a
    longer backoff; after ``MAX_FAILED_STARTS`` the supervisor stops the
    healthy child and exits 1 instead of restarting forever.
    """
    broken = tmp_path / "broken"
    args = ["--processes", "2", "--name", "b"]
    async with supervisor(
        app, redis_url, args, app_path="tests.apps.breaks_later:app",
        STREAMQ_TEST_BREAK_FILE=str(broken),
    ) as sup:  # fmt: skip
        await wait_for_consumers(app, {"b-0", "b-1"})
        broken.touch()
        (pid,) = started_pids(sup, 0)
        os.kill(pid, signal.SIGKILL)
        code = await sup.wait(timeout_s=90)
    assert code == 1, sup.output()
    assert len(started_pids(sup, 0)) == 1 + MAX_FAILED_STARTS
    assert len(started_pids(sup, 1)) == 1
    restarts = events(sup, "worker process exited; restarting")
    assert [r["exit_code"] for r in restarts] == [137] + [1] * (MAX_FAILED_STARTS - 1)
    delays = [r["restart_in_s"] for r in restarts]
    assert delays == sorted(delays) and delays[-1] > delays[1], delays
    (gave_up,) = events(sup, "worker process failed to start again; giving up")
    assert (gave_up["slot"], gave_up["exit_code"]) == (0, 1)
    (other,) = [r for r in events(sup, "worker process exited") if r["slot"] == 1]
    assert other["exit_code"] == 0  # stopped gracefully


async def test_burst_processes_drain_the_queue_and_exit(app: App, redis_url: str) -> None:
    """``--burst``: each child exits 0 once the queue is empty, then the supervisor exits 0."""
    register(app)
    jobs = [await app.enqueue(ADD, i, i) for i in range(20)]
    async with supervisor(app, redis_url, ["--processes", "2", "--burst"]) as sup:
        code = await sup.wait(timeout_s=60)
    assert code == 0, sup.output()
    assert [await job.result(timeout=1) for job in jobs] == [2 * i for i in range(20)]
    assert sorted(r["exit_code"] for r in events(sup, "worker process exited")) == [0, 0]
    assert events(sup, "worker process exited; restarting") == []


async def test_metrics_port_serves_the_sum_of_every_process(app: App, redis_url: str) -> None:
    """One endpoint counts the jobs of both children, and keeps a dead child's counts.

    Two 2 s jobs run at once on two processes of concurrency 1 (one each),
    then six quick ones: the endpoint's totals are 2 and 6. After one child
    is SIGKILLed and restarted, the totals are unchanged and the restart is
    counted.
    """
    register(app)
    port = free_port()
    args = ["--processes", "2", "--concurrency", "1", "--name", "m", "--metrics-port", str(port)]
    async with supervisor(app, redis_url, args) as sup:
        await wait_for_consumers(app, {"m-0", "m-1"})
        slow = [await app.enqueue(SLEEP, 2.0) for _ in range(2)]
        await wait_running(slow)
        assert sorted(await workers_of(slow)) == ["m-0", "m-1"]
        quick = [await app.enqueue(ADD, i, 1) for i in range(6)]
        for job in [*slow, *quick]:
            await job.result(timeout=30)

        def totals(text: str) -> tuple[float, float]:
            labels = {"queue": app.name, "outcome": "succeeded"}
            return (
                value(text, "streamq_jobs_total", task=SLEEP, **labels),
                value(text, "streamq_jobs_total", task=ADD, **labels),
            )

        async def all_counted() -> bool:
            text = await anyio.to_thread.run_sync(scrape, port)
            try:
                return totals(text) == (2, 6)
            except AssertionError:  # not recorded yet
                return False

        await wait_until(all_counted, 20, "the endpoint to count every job")
        text = await anyio.to_thread.run_sync(scrape, port)
        assert value(text, "streamq_job_duration_seconds_count", queue=app.name, task=ADD) == 6
        assert value(text, "streamq_worker_restarts_total") == 0
        # Gauges: every child samples the queue; one series, no per-process label.
        assert value(text, "streamq_queue_pending", queue=app.name, priority="default") >= 0

        (pid,) = started_pids(sup, 0)
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: len(started_pids(sup, 0)) == 2, 30, "the child restarted")
        text = await anyio.to_thread.run_sync(scrape, port)
        assert totals(text) == (2, 6)
        assert value(text, "streamq_worker_restarts_total") == 1
        sup.signal(signal.SIGTERM)
        code = await sup.wait(timeout_s=30)
    assert code == 0, sup.output()
    assert len(events(sup, "metrics served")) == 1  # the supervisor's; children serve nothing


async def test_a_process_deaf_to_sigterm_is_killed_after_the_grace(
    app: App, redis_url: str
) -> None:
    """A child that ignores SIGTERM is SIGKILLed once the grace is over: exit 137, job pending.

    Its handler swaps the worker's signal handlers for SIG_IGN, so neither a
    graceful stop nor the worker's watchdog can end it; only the supervisor,
    a little after ``--grace``. The other child stops cleanly. The exit code
    says a child had to be killed; the job it ran stays pending for a reclaim.
    """
    deaf.register(app)
    args = ["--processes", "2", "--grace", "1", "--name", "d"]
    async with supervisor(app, redis_url, args, app_path="tests.apps.deaf:app") as sup:
        await wait_for_consumers(app, {"d-0", "d-1"})
        job = await app.enqueue(deaf.SLEEP, 60.0)
        await wait_running([job])
        sup.signal(signal.SIGTERM)
        code = await sup.wait(timeout_s=30)
    assert code == 128 + signal.SIGKILL, sup.output()
    (killed,) = events(sup, "worker process outlived the grace period; killing it")
    exits = {r["pid"]: r["exit_code"] for r in events(sup, "worker process exited")}
    assert exits.pop(killed["pid"]) == 128 + signal.SIGKILL
    assert list(exits.values()) == [0]
    assert await job.status() == JobStatus.RUNNING
    redis = await app.redis()
    assert int((await redis.xpending(app.keys.stream("default"), GROUP))["pending"]) == 1


async def test_a_second_signal_stops_every_process_at_once(app: App, redis_url: str) -> None:
    """SIGTERM starts a 120 s grace; SIGINT after it is passed on and ends it: exit 130.

    The job's handler shields itself for 60 s, so without the second signal
    the child would run past the test's 30 s deadline.
    """
    hostile.register(app)
    args = ["--processes", "2", "--grace", "120", "--name", "h"]
    async with supervisor(app, redis_url, args, app_path="tests.apps.hostile:app") as sup:
        await wait_for_consumers(app, {"h-0", "h-1"})
        job = await app.enqueue(hostile.SHIELDED, 60.0)
        await wait_running([job])
        (holder,) = await workers_of([job])
        sup.signal(signal.SIGTERM)

        def both_signalled() -> bool:
            return len(events(sup, "signal: finishing in-flight jobs")) == 2

        await wait_until(both_signalled, 10, "both children to take the signal")
        sup.signal(signal.SIGINT)
        code = await sup.wait(timeout_s=30)
    assert code == 128 + signal.SIGINT, sup.output()
    assert len(events(sup, "second signal: stopping worker processes now")) == 1
    # The idle child was already gone; the one holding the job stopped at once.
    assert [r["worker"] for r in events(sup, "second signal: stopping now")] == [holder]
    assert await job.status() == JobStatus.RUNNING


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_children_stop_by_themselves_when_the_supervisor_is_killed(
    app: App, redis_url: str
) -> None:
    """SIGKILL the supervisor (no chance to pass anything on): its children stop anyway."""
    async with supervisor(app, redis_url, ["--processes", "2", "--name", "o"]) as sup:
        await wait_for_consumers(app, {"o-0", "o-1"})
        pids = started_pids(sup, 0) + started_pids(sup, 1)
        sup.signal(signal.SIGKILL)
        await sup.wait(timeout_s=10)
        await wait_until(lambda: all(gone(pid) for pid in pids), 30, "the children to exit")
    assert len(events(sup, "the supervisor is gone: stopping")) == 2
    assert sorted(r["worker"] for r in events(sup, "worker stopped")) == ["o-0", "o-1"]


@pytest.fixture
def _restore_structlog() -> Any:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("_restore_structlog")
@pytest.mark.parametrize("processes", ["0", "-2", "two"])
def test_processes_must_be_a_positive_integer(
    processes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--processes`` below 1 is bad usage: one line on stderr, exit 2, nothing started."""
    assert main(["worker", APP_PATH, "--processes", processes]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("streamq: ") and "--processes" in err, err
