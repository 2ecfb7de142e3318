"""``streamq replay`` and ``streamq dlq`` in-process: ids, bad arguments, counts, exit codes.

Each test gives the CLI its own App (registered in ``sys.modules`` under a
per-test module name, so ``load_app`` imports it like a user's module) on
its own queue, and runs the command in a thread with typer's CliRunner: the
command starts its own event loop there, as it does in a shell. Checks that
must happen before any connection run against a socket where nothing
listens, so talking to Redis would show up as exit 3.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner, Result

from streamq import App, JobStatus
from streamq.cli import EXIT_USAGE, cli
from streamq.dlq import DeadLetters
from tests.apps.slow import FAIL, register
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio

TOO_BIG = "99999999999999999999999"  # more than 64 bits of milliseconds


@pytest.fixture
def cli_app(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A module ``<name>:app`` for the CLI to load; set its ``app`` before use."""
    module = types.ModuleType(f"streamq_cli_test_{queue_name()}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def app_path(module: types.ModuleType, url: str, name: str) -> str:
    module.app = register(App(name, redis_url=url))  # type: ignore[attr-defined]
    return f"{module.__name__}:app"


async def run(args: list[str], stdin: str | None = None) -> Result:
    runner = CliRunner()
    return await anyio.to_thread.run_sync(lambda: runner.invoke(cli, args, input=stdin))


def one_line_usage_error(result: Result, hint: str, message: str) -> None:
    """Exit 2, the option and the reason named, and no traceback."""
    assert result.exit_code == EXIT_USAGE, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    error_lines = [line for line in result.stderr.splitlines() if "Invalid value" in line]
    assert len(error_lines) == 1, result.stderr
    flat = " ".join(result.stderr.replace("│", " ").split())
    assert hint in flat and message in flat, result.stderr


@pytest.fixture
async def dead_queue(redis_url: str) -> AsyncIterator[tuple[App, str]]:
    """A queue with one dead job in its DLQ; yields the App and the job id."""
    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        job = await app.enqueue(FAIL, "boom")
        async with running_worker(app):
            assert await job.wait(timeout=10) == JobStatus.FAILED
        yield app, job.id
        await drop_queue(app)


@pytest.mark.parametrize("command", ["show", "requeue"])
@pytest.mark.parametrize(
    "entry_id", ["garbage-id", "12", "1-2-3", "-1-0", f"{TOO_BIG}-0", f"1-{TOO_BIG}"]
)
async def test_dlq_garbage_entry_id_is_a_usage_error_before_redis(
    command: str, entry_id: str, cli_app: types.ModuleType, tmp_path: Path
) -> None:
    path = app_path(cli_app, f"unix://{tmp_path}/nobody.sock", queue_name())
    result = await run(["dlq", command, path, "--", entry_id])
    one_line_usage_error(result, "ID", f"{entry_id!r} is not a DLQ entry id")


async def test_dlq_requeue_checks_every_id_before_requeueing_any(
    dead_queue: tuple[App, str], cli_app: types.ModuleType, redis_url: str
) -> None:
    app, _ = dead_queue
    (letter,) = await DeadLetters(app).entries()
    path = app_path(cli_app, redis_url, app.name)
    result = await run(["dlq", "requeue", path, letter.id, "nonsense"])
    one_line_usage_error(result, "ID", "'nonsense' is not a DLQ entry id")
    assert await DeadLetters(app).count() == 1


@pytest.mark.parametrize(
    ("args", "hint", "message"),
    [
        (["--since", TOO_BIG], "--since", f"{TOO_BIG!r} does not fit a stream id"),
        (["--until", TOO_BIG], "--until", f"{TOO_BIG!r} does not fit a stream id"),
        (["--since", f"1-{TOO_BIG}"], "--since", "does not fit a stream id"),
        (["--since", "1969-12-31"], "--since", "before 1970"),
        (["--since", "2026-11-02", "--until", "2026-11-01"], "--since", "after --until"),
        (["--since", "1793534400000-6", "--until", "1793534400000-5"], "--since", "after --until"),
    ],
    ids=["since-too-big", "until-too-big", "seq-too-big", "before-epoch", "dates", "ids"],
)
async def test_replay_bad_time_bounds_are_usage_errors_before_redis(
    args: list[str], hint: str, message: str, cli_app: types.ModuleType, tmp_path: Path
) -> None:
    path = app_path(cli_app, f"unix://{tmp_path}/nobody.sock", queue_name())
    one_line_usage_error(await run(["replay", path, *args]), hint, message)


async def test_replay_last_day_there_is_as_until(cli_app: types.ModuleType, redis_url: str) -> None:
    """``--until 9999-12-31`` (the day's end is past datetime's range) reads everything."""
    path = app_path(cli_app, redis_url, queue_name())
    result = await run(["replay", path, "--since", "2026-11-01", "--until", "9999-12-31"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout == ""


async def test_replay_of_an_unknown_job_says_so_and_exits_1(
    cli_app: types.ModuleType, redis_url: str
) -> None:
    path = app_path(cli_app, redis_url, queue_name())
    result = await run(["replay", path, "--job", "no-such-job"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["streamq: no history for job id 'no-such-job'"]


async def test_replay_source_dlq_prints_the_entry_id_that_dlq_requeue_takes(
    dead_queue: tuple[App, str], cli_app: types.ModuleType, redis_url: str
) -> None:
    """The record's ``id`` is the DLQ entry's, ``job_id`` the job's; requeue accepts the id."""
    app, job_id = dead_queue
    (letter,) = await DeadLetters(app).entries()
    path = app_path(cli_app, redis_url, app.name)
    replayed = await run(["replay", path, "--source", "dlq"])
    assert replayed.exit_code == 0, (replayed.output, replayed.exception)
    (record,) = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert (record["id"], record["job_id"], record["kind"]) == (letter.id, job_id, "dead")

    messages = await run(["replay", path, "--source", "jobs"])
    redis = await app.redis()
    stream_ids = [entry[0].decode() for entry in await redis.xrange(app.keys.stream("default"))]
    records = [json.loads(line) for line in messages.stdout.splitlines()]
    assert [r["id"] for r in records] == stream_ids
    assert {r["job_id"] for r in records} == {job_id}

    requeued = await run(["dlq", "requeue", path, record["id"]])
    assert requeued.exit_code == 0, (requeued.output, requeued.exception)
    assert requeued.stdout == "requeued 1 job\n"
    assert await DeadLetters(app).count() == 0
    assert await app.job(job_id).status() == JobStatus.QUEUED
    async with running_worker(app):  # it fails for good again, and leaves no key behind
        assert await app.job(job_id).wait(timeout=10) == JobStatus.FAILED


async def test_dlq_list_keeps_ids_whole_at_40_columns_and_counts_one_entry(
    dead_queue: tuple[App, str], cli_app: types.ModuleType, redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    app, _ = dead_queue
    (letter,) = await DeadLetters(app).entries()
    path = app_path(cli_app, redis_url, app.name)
    monkeypatch.setenv("COLUMNS", "40")
    listed = await run(["dlq", "list", path])
    assert listed.exit_code == 0, (listed.output, listed.exception)
    assert any(letter.id in line for line in listed.stdout.splitlines()), listed.stdout
    assert "1 entry" in listed.stdout and "1 entries" not in listed.stdout

    purged = await run(["dlq", "purge", path, "--yes"])
    assert purged.stdout == "deleted 1 entry\n"


async def test_dlq_purge_answered_no_deletes_nothing_and_exits_0(
    dead_queue: tuple[App, str], cli_app: types.ModuleType, redis_url: str
) -> None:
    app, _ = dead_queue
    path = app_path(cli_app, redis_url, app.name)
    declined = await run(["dlq", "purge", path], stdin="n\n")
    assert declined.exit_code == 0, (declined.output, declined.exception)
    assert "nothing deleted" in declined.stdout
    assert await DeadLetters(app).count() == 1


async def test_replay_redrive_counts_one_job(
    dead_queue: tuple[App, str], cli_app: types.ModuleType, redis_url: str
) -> None:
    app, _ = dead_queue
    path = app_path(cli_app, redis_url, app.name)
    dry = await run(["replay", path, "--redrive", "--task", FAIL, "--limit", "1"], stdin="n\n")
    assert dry.exit_code == 0, (dry.output, dry.exception)
    assert "dry run: 1 job would be re-enqueued" in dry.stderr
    assert "Re-enqueue 1 job into queue" in dry.stderr
