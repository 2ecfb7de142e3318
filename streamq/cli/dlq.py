"""``streamq dlq``: list, show, requeue and purge dead jobs."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamq.app import App
from streamq.cli._common import AppArg, RedisUrlOpt, counted, parse_duration, run_with_app
from streamq.cli._load import load_app
from streamq.dlq import DeadLetter, DeadLetterNotFound
from streamq.partition_ops import AllDeadLetters as DeadLetters
from streamq.partition_ops import split_entry_id

dlq_cli = typer.Typer(help="Inspect, requeue and purge dead jobs.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _check_ids(entry_ids: list[str]) -> None:
    """Exit 2 on the first argument that is no entry id, before anything talks to Redis."""
    for entry_id in entry_ids:
        try:
            split_entry_id(entry_id)  # <ms>-<seq>, or <partition>/<ms>-<seq>
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="ID") from None


def _record(letter: DeadLetter) -> dict[str, object]:
    return {
        "id": letter.id, "job_id": letter.job_id, "task": letter.task,
        "attempts": letter.attempts, "deliveries": letter.deliveries, "reason": letter.reason,
        "error_type": letter.error_type, "error": letter.error, "origin": letter.origin_stream,
        "origin_id": letter.origin_id, "dead_ms": letter.dead_ms,
    }  # fmt: skip


@dlq_cli.command("list")
def list_(
    app_path: AppArg,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries.")] = 100,
    task: Annotated[str | None, typer.Option(help="Only this task's entries.")] = None,
    as_json: JsonOpt = False,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Dead jobs, oldest first: id, task, attempts, deliveries, error, age."""
    app = load_app(app_path, redis_url)

    async def body(app: App) -> tuple[list[DeadLetter], int]:
        dlq = DeadLetters(app)
        return await dlq.entries(limit=limit, task=task), await dlq.count()

    letters, total = run_with_app(app, body)
    if as_json:
        for letter in letters:
            typer.echo(json.dumps(_record(letter)))
        return
    table = Table(
        title=f"DLQ of {app.name}: {counted(total, 'entry', 'entries')}"
        + (f" (showing {len(letters)})" if len(letters) < total else "")
    )
    # An id is for copying into `dlq show|requeue`: never wrapped or folded, at
    # any width (a narrow terminal crops the table's right side instead).
    id_width = max((len(letter.id) for letter in letters), default=2)
    table.add_column("id", no_wrap=True, overflow="ignore", min_width=id_width)
    for column in ("task", "attempts", "deliveries", "error", "age"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        error = f"{letter.error_type}: {letter.error}" if letter.error_type else letter.reason
        table.add_row(
            letter.id, letter.task or "?", str(letter.attempts or "-"),
            str(letter.deliveries or "-"), error[:80], _age(letter.age_s),
        )  # fmt: skip
    Console().print(table)


@dlq_cli.command("show")
def show(
    app_path: AppArg,
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="DLQ entry id")],
    redis_url: RedisUrlOpt = None,
) -> None:
    """Every field of one dead job, with its traceback."""
    _check_ids([entry_id])
    app = load_app(app_path, redis_url)

    async def body(app: App) -> DeadLetter:
        return await DeadLetters(app).get(entry_id)

    try:
        letter = run_with_app(app, body)
    except DeadLetterNotFound as exc:
        typer.echo(f"streamq: {exc}", err=True)
        raise typer.Exit(1) from None
    for key, value in letter.fields.items():
        if key not in {"dlq_traceback", "payload"}:
            typer.echo(f"{key}: {value}")
    typer.echo(f"payload: {letter.fields.get('payload', '')}")
    if letter.traceback:
        typer.echo("traceback:\n" + letter.traceback)


@dlq_cli.command("requeue")
def requeue(
    app_path: AppArg,
    entry_ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every entry (of --task).")] = False,
    task: Annotated[str | None, typer.Option(help="With --all: only this task.")] = None,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Put dead jobs back in their priority stream as fresh first attempts."""
    if bool(entry_ids) == all_:
        raise typer.BadParameter("give entry ids or --all, not both or neither", param_hint="ID")
    if task and not all_:
        raise typer.BadParameter("--task goes with --all", param_hint="--task")
    _check_ids(entry_ids or [])
    app = load_app(app_path, redis_url)

    async def body(app: App) -> tuple[list[str], list[str]]:
        dlq = DeadLetters(app)
        if all_:
            return await dlq.requeue_all(task=task), []
        done, missing = [], []
        for entry_id in entry_ids or []:
            try:
                done.append(await dlq.requeue(entry_id))
            except (DeadLetterNotFound, ValueError) as exc:
                missing.append(f"{entry_id}: {exc}")
        return done, missing

    done, missing = run_with_app(app, body)
    typer.echo(f"requeued {counted(len(done), 'job', 'jobs')}")
    for line in missing:
        typer.echo(f"streamq: not requeued: {line}", err=True)
    if missing:
        raise typer.Exit(1)


@dlq_cli.command("purge")
def purge(
    app_path: AppArg,
    older_than: Annotated[
        str | None, typer.Option(help="Only entries older than this (90s, 15m, 12h, 7d).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Delete dead jobs for good (asks first unless --yes)."""
    seconds = None if older_than is None else parse_duration(older_than, "--older-than")
    app = load_app(app_path, redis_url)
    scope = "every DLQ entry" if seconds is None else f"DLQ entries older than {older_than}"
    if not yes and not typer.confirm(f"Delete {scope} of queue {app.name}?", default=False):
        typer.echo("nothing deleted")
        return  # declining is an answer, not a failure

    async def body(app: App) -> int:
        return await DeadLetters(app).purge(older_than_s=seconds)

    typer.echo(f"deleted {counted(run_with_app(app, body), 'entry', 'entries')}")
