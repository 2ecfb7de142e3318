"""``streamq archive``: export a queue's history into an archive and list it.

The command runs in a thread with typer's CliRunner (it starts its own event
loop there, as in a shell), on an App registered as a module for ``load_app``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner, Result

from streamq import App
from streamq.archive import Archive
from streamq.cli import EXIT_USAGE, cli
from tests.apps.slow import ADD, register
from tests.conftest import queue_name
from tests.test_archive import BASE_MS, HOUR_MS, add, entries_over, live

pytestmark = pytest.mark.anyio

# The command as `streamq archive` (the top-level CLI registers it the same way).
streamq_cli = cli


@pytest.fixture
def cli_app(monkeypatch: pytest.MonkeyPatch, redis_url: str, app: App) -> str:
    """``module:app`` for the CLI: its own App (its own event loop) on the test's queue."""
    module = types.ModuleType(f"streamq_cli_archive_{queue_name()}")
    module.app = register(App(app.name, redis_url=redis_url))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    register(app)
    return f"{module.__name__}:app"


async def run(*args: str) -> Result:
    runner = CliRunner()
    return await anyio.to_thread.run_sync(lambda: runner.invoke(streamq_cli, ["archive", *args]))


async def test_archive_exports_every_history_stream_and_lists_them(
    cli_app: str, app: App, tmp_path: Path
) -> None:
    path = cli_app
    redis = await app.redis()
    old = entries_over(hours=3, per_hour=40)
    await add(redis, app.keys.events, old)
    jobs = await app.tasks[ADD].enqueue_many([(i, i) for i in range(25)])
    target = str(tmp_path / "archive")

    # Default: the windows that have ended (the old hours, at least).
    result = await run(path, "--to", target, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    by_stream = {s["stream"]: s for s in report["streams"]}
    assert set(by_stream) == {*app.streams, app.keys.events, app.keys.dlq}
    assert by_stream[app.keys.events]["entries"] >= 120
    assert report["bytes"] > 0 and report["location"] == target

    result = await run(path, "--to", target, "--all")
    assert result.exit_code == 0, result.output
    assert f"to {target}" in result.stdout
    archived = Archive(target)
    stream = app.keys.stream(app.default_priority)
    messages = await anyio.to_thread.run_sync(lambda: list(archived.read(stream)))
    assert [f[b"id"].decode() for _, f in messages] == [j.id for j in jobs]
    assert await anyio.to_thread.run_sync(
        lambda: list(archived.read(app.keys.events))
    ) == await live(redis, app.keys.events)

    again = json.loads((await run(path, "--to", target, "--all", "--json")).stdout)
    assert again["entries"] == 0 and again["segments"] == 0

    listing = await run(path, "--to", target, "--list", "--json")
    assert listing.exit_code == 0, listing.output
    statuses = {s["stream"]: s for s in json.loads(listing.stdout)["streams"]}
    assert statuses[stream]["entries"] == 25
    assert statuses[app.keys.events]["oldest"] == old[0][0]
    assert statuses[app.keys.dlq]["segments"] == []
    table = await run(path, "--to", target, "--list")
    assert table.exit_code == 0 and "events" in table.stdout, table.output


async def test_until_archives_up_to_a_moment(cli_app: str, app: App, tmp_path: Path) -> None:
    path = cli_app
    redis = await app.redis()
    old = entries_over(hours=3, per_hour=10)
    await add(redis, app.keys.events, old)
    target = str(tmp_path)
    until = str(BASE_MS + HOUR_MS + HOUR_MS // 2)  # epoch ms: hour 2 half-way, an entry at it

    result = await run(path, "--to", target, "--until", until)
    assert result.exit_code == 0, result.output
    assert "16 entries in 2 segments" in result.stdout
    assert Archive(target).watermark(app.keys.events) == old[15][0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "2026-01-01", "--all"], "not both"),
        (["--until", "yesterday"], "not a date"),
        (["--list", "--all"], "writes nothing"),
    ],
)
async def test_bad_options_are_usage_errors(
    cli_app: str, tmp_path: Path, args: list[str], message: str
) -> None:
    result = await run(cli_app, "--to", str(tmp_path), *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in " ".join(result.stderr.split())


async def test_a_url_without_fsspec_is_a_usage_error(
    cli_app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    result = await run(cli_app, "--to", "s3://bucket/x", "--list")
    assert result.exit_code == EXIT_USAGE, result.output
    assert "streamq[archive]" in result.stderr
