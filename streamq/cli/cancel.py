"""``streamq cancel`` (jobs by id) and ``streamq queue empty`` (every waiting job)."""

from __future__ import annotations

from typing import Annotated

import typer

from streamq.app import App
from streamq.cancel import CancelResult
from streamq.cli._common import AppArg, RedisUrlOpt, counted, run_with_app
from streamq.cli._load import load_app
from streamq.partition_ops import empty_all
from streamq.partitions import cancel_jobs

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
        return await empty_all(app, task=task)  # every partition

    typer.echo(f"removed {counted(run_with_app(app, body), 'job')}")


@queue_cli.command("partitions")
def partitions_(
    app_path: AppArg,
    reset: Annotated[
        bool,
        typer.Option(
            help="Lower the high-water mark to the configured count, if every partition "
            "beyond it is empty."
        ),
    ] = False,
    redis_url: RedisUrlOpt = None,
) -> None:
    """The queue's partitions: the configured count, the high-water mark (the most ever
    used, which workers keep draining) and what each partition holds."""
    from streamq.partitions import read_mark, reset_mark, unfinished

    app = load_app(app_path, redis_url)

    async def body(app: App) -> tuple[int, int, dict[int, dict[str, int]]]:
        mark = await read_mark(app)
        if reset:
            mark, busy = await reset_mark(app)
            return mark, mark, busy
        covered = max(app.partitions, mark)
        held = {i: await unfinished(app.partition(i)) for i in range(covered)}
        return mark, covered, held

    mark, covered, held = run_with_app(app, body)
    typer.echo(f"configured: {app.partitions}; high-water mark: {mark or 1}; covered: {covered}")
    for index, counts in held.items():
        shown = ", ".join(f"{k} {v}" for k, v in counts.items())
        typer.echo(f"partition {index}: {shown}")
    if reset and held:
        typer.echo("streamq: mark not lowered: the partitions above still hold jobs", err=True)
        raise typer.Exit(1)
