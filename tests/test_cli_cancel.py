"""``streamq cancel`` and ``streamq queue empty`` in-process: lines printed, exit codes,
confirmation, and what is left in Redis.

Each test gives the CLI its own App (registered in ``sys.modules`` under a
per-test module name, so ``load_app`` imports it like a user's module) on its
own queue, and runs the command in a thread with typer's CliRunner, which
starts its own event loop there as a shell would; the test's worker runs in
the test's loop meanwhile.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import AsyncIterator

import anyio
import pytest
from typer.testing import CliRunner, Result

from streamq import App, JobStatus
from streamq.cli import cli
from tests.conftest import assert_no_key_leak, drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio


@pytest.fixture
async def cli_app(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> AsyncIterator[tuple[App, str]]:
    """The test's App, with tasks 'a' (waits for ``release``) and 'b', and the
    ``module:app`` path of a second App on the same queue for the CLI (which runs
    its own event loop: it cannot share the test's client)."""
    module = types.ModuleType(f"streamq_cli_cancel_{queue_name()}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    name = queue_name()
    release = anyio.Event()
    started = anyio.Event()

    def register(app: App) -> App:
        @app.task(name="a")
        async def a() -> str:
            started.set()
            await release.wait()
            return "a"

        @app.task(name="b")
        async def b() -> str:
            return "b"

        return app

    module.app = register(App(name, redis_url=redis_url))  # type: ignore[attr-defined]
    module.release, module.started = release, started  # type: ignore[attr-defined]
    async with register(App(name, redis_url=redis_url)) as app:
        yield app, f"{module.__name__}:app"
        release.set()
        await assert_no_key_leak(app)
        await drop_queue(app)


async def run(args: list[str], stdin: str | None = None) -> Result:
    runner = CliRunner()
    return await anyio.to_thread.run_sync(lambda: runner.invoke(cli, args, input=stdin))


async def test_cancel_prints_a_line_per_job_and_replay_tells_the_story(
    cli_app: tuple[App, str],
) -> None:
    app, path = cli_app
    queued = await app.enqueue("b")
    result = await run(["cancel", path, queued.id])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{queued.id}: cancelled\n"
    assert await queued.status() == JobStatus.CANCELLED

    story = await run(["replay", path, "--job", queued.id])
    assert story.exit_code == 0, story.output
    records = [json.loads(line) for line in story.stdout.splitlines()]
    assert [r["kind"] for r in records if r["source"] == "event"] == ["enqueued", "cancelled"]
    assert records[-1]["kind"] == "cancelled"  # the job hash: its status

    again = await run(["cancel", path, queued.id, "no-such-job"])
    assert again.exit_code == 1
    assert again.stdout == (
        f"{queued.id}: already finished; nothing changed\nno-such-job: not found\n"
    )


async def test_cancel_of_a_running_job_asks_its_worker(cli_app: tuple[App, str]) -> None:
    app, path = cli_app
    module = sys.modules[path.partition(":")[0]]
    job = await app.enqueue("a")
    async with running_worker(app):
        with anyio.fail_after(10):
            await module.started.wait()
        result = await run(["cancel", path, job.id])
        assert result.exit_code == 0, result.output
        assert result.stdout == f"{job.id}: running; its worker was asked to stop it\n"
        assert await job.wait(timeout=5) == JobStatus.CANCELLED


async def test_queue_empty_asks_first_removes_waiting_jobs_and_leaves_running_ones(
    cli_app: tuple[App, str],
) -> None:
    """Refusing leaves everything; --task removes only that task's waiting jobs; the
    running job is untouched and finishes."""
    app, path = cli_app
    module = sys.modules[path.partition(":")[0]]
    running = await app.enqueue("a")
    async with running_worker(app, concurrency=1):  # holds the running job, reads no more
        with anyio.fail_after(10):
            await module.started.wait()
        queued_a = [await app.enqueue("a") for _ in range(2)]
        queued_b = [await app.enqueue("b") for _ in range(3)]
        scheduled_b = await app.tasks["b"].enqueue_in(600)

        declined = await run(["queue", "empty", path, "--task", "b"], stdin="n\n")
        assert declined.exit_code == 0, declined.output
        assert "Cancel every waiting job of task b" in declined.stdout
        assert declined.stdout.endswith("nothing removed\n")
        for job in [*queued_a, *queued_b]:
            assert await job.status() == JobStatus.QUEUED
        assert await scheduled_b.status() == JobStatus.SCHEDULED

        only_b = await run(["queue", "empty", path, "--task", "b"], stdin="y\n")
        assert only_b.exit_code == 0, only_b.output
        assert only_b.stdout.endswith("removed 4 jobs\n")
        for job in [*queued_b, scheduled_b]:
            assert await job.status() == JobStatus.CANCELLED
        for job in queued_a:
            assert await job.status() == JobStatus.QUEUED

        everything = await run(["queue", "empty", path, "--yes"])
        assert everything.exit_code == 0, everything.output
        assert everything.stdout == "removed 2 jobs\n"
        for job in queued_a:
            assert await job.status() == JobStatus.CANCELLED
        assert await running.status() == JobStatus.RUNNING
        module.release.set()
        assert await running.result(timeout=10) == "a"
        marker = await app.enqueue("b")  # read after everything enqueued before it
        assert await marker.result(timeout=10) == "b"
    for job in [*queued_a, *queued_b, scheduled_b]:
        assert await job.status() == JobStatus.CANCELLED  # none of them ran after all
    nothing = await run(["queue", "empty", path, "-y"])
    assert nothing.stdout == "removed 0 jobs\n"
