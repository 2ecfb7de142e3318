"""``streamq cron list``: an App's cron and periodic schedules, their next and last runs."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamq.app import App
from streamq.cli._common import AppArg, RedisUrlOpt, run_with_app
from streamq.cli._load import load_app
from streamq.cron import ScheduleInfo, list_schedules

cron_cli = typer.Typer(help="Inspect cron and periodic schedules.", no_args_is_help=True)


@cron_cli.command("list")
def list_(
    app_path: AppArg,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Each schedule: name, task, cron expression or period, timezone, next run,
    last run with its job id and status (times in the schedule's timezone)."""
    app = load_app(app_path, redis_url)

    async def body(app: App) -> list[ScheduleInfo]:
        return await list_schedules(app)

    infos = run_with_app(app, body)
    if as_json:
        for info in infos:
            typer.echo(json.dumps(info.to_dict()))
        return
    if not infos:
        typer.echo(f"no schedules on {app.name} (declare one with @app.cron or @app.periodic)")
        return
    table = Table(title=f"schedules of {app.name}", title_justify="left")
    for column in ("name", "task", "schedule", "tz", "next run", "last run"):
        table.add_column(column, overflow="fold")
    # A job id is for copying into other commands: never folded (as `dlq list`'s ids).
    id_width = max((len(info.last_job_id or "-") for info in infos), default=2)
    table.add_column("last job", no_wrap=True, overflow="ignore", min_width=id_width)
    table.add_column("status", overflow="fold")
    for info in infos:
        record = info.to_dict()
        table.add_row(
            info.name, info.task, info.schedule.describe(), record["tz"],
            record["next_run"] or "-", record["last_run"] or "-",
            info.last_job_id or "-", info.last_job_status or "-",
        )  # fmt: skip
    Console().print(table)
