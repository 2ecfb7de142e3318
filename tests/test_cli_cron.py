"""``streamq cron list``: each schedule with its next and last run, as a table or JSON."""

from __future__ import annotations

import json
import sys
import types
from datetime import timedelta

import anyio
import pytest
from typer.testing import CliRunner, Result

from streamq import App
from streamq.cli import EXIT_OK, cli
from streamq.cron import job_id_for, run_due, server_now_ms
from tests.conftest import drop_queue, queue_name, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def cli_app(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A module ``<name>:app`` for the CLI to load; set its ``app`` before use."""
    module = types.ModuleType(f"streamq_cli_test_{queue_name()}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


async def run(args: list[str]) -> Result:
    runner = CliRunner()
    # Wide enough that rich folds no cell of the table.
    return await anyio.to_thread.run_sync(lambda: runner.invoke(cli, args, env={"COLUMNS": "250"}))


def scheduled_app(url: str, name: str) -> App:
    app = App(name, redis_url=url)

    @app.cron("30 2 * * *", tz="Europe/Paris", name="nightly")
    async def nightly() -> None: ...

    @app.periodic(every=timedelta(milliseconds=200), name="beat", catch_up="once")
    async def beat() -> None: ...

    @app.task(name="plain")
    async def plain() -> None: ...

    return app


async def test_cron_list_shows_each_schedule_with_next_and_last_run(
    redis_url: str, cli_app: types.ModuleType
) -> None:
    """Before any janitor ran: next runs, no last run. After a tick ran: its job
    id and status. Tasks without a schedule are not listed."""
    # The CLI's App is its own (its client belongs to the command's event loop).
    name = queue_name()
    app = scheduled_app(redis_url, name)
    cli_app.app = scheduled_app(redis_url, name)  # type: ignore[attr-defined]
    path = f"{cli_app.__name__}:app"
    async with app:
        result = await run(["cron", "list", path, "--json"])
        assert result.exit_code == EXIT_OK, result.output
        before = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["name"] for r in before] == ["beat", "nightly"]
        nightly = before[1]
        assert nightly["task"] == "nightly" and nightly["cron"] == "30 2 * * *"
        assert nightly["tz"] == "Europe/Paris" and nightly["every_s"] is None
        assert nightly["next_run"].endswith(("T02:30:00+01:00", "T02:30:00+02:00"))
        assert nightly["next_run_ms"] > await server_now_ms(app)
        assert nightly["last_run"] is None and nightly["last_job_id"] is None
        assert before[0]["every_s"] == 0.2 and before[0]["catch_up"] == "once"

        await run_due(app)  # a janitor starts the schedules
        jobs: list[str] = []

        async def ticked() -> bool:
            jobs.extend(await run_due(app))
            return bool(jobs)

        await wait_until(ticked, timeout=5, description="a tick of beat")
        result = await run(["cron", "list", path, "--json"])
        assert result.exit_code == EXIT_OK, (result.output, result.exception)
        beat = json.loads(result.stdout.splitlines()[0])
        assert beat["last_job_id"] == jobs[0] == job_id_for("beat", beat["last_run_ms"])
        assert beat["last_job_status"] == "queued"
        assert beat["next_run_ms"] > beat["last_run_ms"]

        table = await run(["cron", "list", path])
        assert table.exit_code == EXIT_OK, table.output
        flat = " ".join(table.stdout.replace("│", " ").split())
        for text in ("nightly", "30 2 * * *", "Europe/Paris", "every 0.2s", jobs[0], "queued"):
            assert text in flat, table.stdout
        assert "plain" not in flat
        await drop_queue(app)


async def test_cron_list_without_schedules_says_so(
    redis_url: str, cli_app: types.ModuleType
) -> None:
    cli_app.app = App(queue_name(), redis_url=redis_url)  # type: ignore[attr-defined]
    result = await run(["cron", "list", f"{cli_app.__name__}:app"])
    assert result.exit_code == EXIT_OK
    assert "no schedules" in result.stdout


async def test_cron_list_of_an_unknown_app_is_a_usage_error() -> None:
    result = await run(["cron", "list", "no_such_module_here:app"])
    assert result.exit_code == 2, result.output
