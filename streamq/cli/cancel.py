"""``streamq cancel`` (jobs by id) and ``streamq queue empty`` (every waiting job)."""

from __future__ import annotations

from typing import Annotated

import typer

from streamq.app import App
from streamq.cancel import CancelResult, cancel_jobs, empty_queue
from streamq.cli._common import AppArg, RedisUrlOpt, counted, run_with_app
from streamq.cli._load import load_app

queue_cli = typer.Typer(help="Operate on a whole queue.", no_args_is_help=True)

_SAID = {
    CancelResult.CANCELLED: "cancelled",
    CancelResult.REQUESTED: "running; its worker was asked to stop it",
    CancelResult.ALREADY_FINAL: "already finished; nothing changed",
    CancelResult.NOT_FOUND: "not found",
}


def cancel(
    app_path: AppArg,
    job_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="job ids")],
    redis_url: RedisUrlOpt = None,
) -> None:
    """Cancel jobs: a waiting one never runs; a running one is stopped by its worker.

    Prints one line per job. Exits 1 when a job was not found or had already
    finished.
    """
    app = load_app(app_path, redis_url)

    async def body(app: App) -> dict[str, CancelResult]:
        return await cancel_jobs(app, job_ids, by="cli")

    results = run_with_app(app, body)
    for job_id, result in results.items():
        typer.echo(f"{job_id}: {_SAID[result]}")
    if any(r in (CancelResult.ALREADY_FINAL, CancelResult.NOT_FOUND) for r in results.values()):
        raise typer.Exit(1)


@queue_cli.command("empty")
def empty(
    app_path: AppArg,
    task: Annotated[str | None, typer.Option(help="Only this task's jobs.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Cancel every waiting job (queued, scheduled, waiting for a retry); asks first
    unless --yes. Running jobs are not touched."""
    app = load_app(app_path, redis_url)
    scope = "every waiting job" if task is None else f"every waiting job of task {task}"
    if not yes and not typer.confirm(
        f"Cancel {scope} of queue {app.name}? (running jobs go on)", default=False
    ):
        typer.echo("nothing removed")
        return  # declining is an answer, not a failure

    async def body(app: App) -> int:
        return await empty_queue(app, task=task)

    typer.echo(f"removed {counted(run_with_app(app, body), 'job')}")
