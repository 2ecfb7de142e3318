"""``streamq replay``: the retained history as JSON lines or a table; re-drive old jobs."""

from __future__ import annotations

import datetime as dt
import enum
import sys
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import orjson
import typer
from rich.console import Console
from rich.table import Table

from streamq.app import App
from streamq.cli._common import AppArg, RedisUrlOpt, counted, run_with_app
from streamq.cli._load import load_app
from streamq.errors import ConfigError
from streamq.ids import job_id_time_ms
from streamq.partition_ops import AllReplay
from streamq.partitions import locate
from streamq.replay import HistoryRecord, Replay, bound_key, parse_bound


class Source(enum.StrEnum):
    events = "events"
    jobs = "jobs"
    dlq = "dlq"


class Format(enum.StrEnum):
    json = "json"
    table = "table"


_DETAIL = ("attempt", "deliveries", "worker", "duration_ms", "error_type", "error", "dlq_reason",
           "progress", "message", "delay_ms", "payload", "status")  # fmt: skip


def replay(
    app_path: AppArg,
    since: Annotated[
        str | None, typer.Option(help="Date, datetime, epoch ms or stream id.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Date (whole day), datetime, ms or id.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Events: this kind. Jobs: this latest status.")
    ] = None,
    job: Annotated[str | None, typer.Option(help="One job's full story, in order.")] = None,
    source: Annotated[Source, typer.Option(help="Which history to read.")] = Source.events,
    output: Annotated[
        Format, typer.Option("--format", help="JSON lines or a table.")
    ] = Format.json,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many records.")] = None,
    follow: Annotated[
        bool, typer.Option(help="Print new events as they happen (after --since's history).")
    ] = False,
    redrive: Annotated[
        bool, typer.Option(help="Enqueue the selected jobs again (dry run unless --yes).")
    ] = False,
    into: Annotated[str | None, typer.Option(help="With --redrive: target queue.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Really re-drive.")] = False,
    archive: Annotated[
        str | None,
        typer.Option(
            "--archive",
            metavar="DIR_OR_URL",
            help="Read this archive with the live streams (default: $STREAMQ_ARCHIVE).",
        ),
    ] = None,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Read the queue's history for audit: events, job messages or the DLQ."""
    bounds = {}
    for value, option, end in ((since, "--since", False), (until, "--until", True)):
        try:
            bounds[option] = parse_bound(value, end=end)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint=option) from None
    first, last = bounds["--since"], bounds["--until"]
    if first is not None and last is not None and bound_key(first) > bound_key(last):
        raise typer.BadParameter(f"{since} is after --until {until}", param_hint="--since")
    if redrive and (job or follow):
        raise typer.BadParameter(
            "--redrive selects with --since/--until/--task/--status", param_hint="--redrive"
        )
    if into and not redrive:
        raise typer.BadParameter("--into goes with --redrive", param_hint="--into")
    if redrive:
        source = Source.jobs
    app = load_app(app_path, redis_url)
    if archive:
        app.settings = app.settings.with_changes(archive=archive)
    console = Console()
    table = _table() if output is Format.table else None
    lines = _Lines()

    def emit(record: HistoryRecord) -> None:
        if table is None:
            lines.add(record)
        else:
            table.add_row(*_row(record))

    async def select(history: AllReplay) -> AsyncIterator[HistoryRecord]:
        if job and not follow:
            story = await history.story(job)
            if not story:
                raise _NoHistory(job)
            for record in story:
                yield record
            return
        kinds = [status] if status and source is Source.events else None
        if source is Source.events:
            records = history.events(since=since, until=until, task=task, kinds=kinds, job=job)
        elif source is Source.jobs:
            records = history.messages(since=since, until=until, task=task, status=status, job=job)
        else:
            records = history.dead(since=since, until=until, task=task, job=job)
        async for record in records:
            yield record

    async def body(app: App) -> int:
        everything = await AllReplay.of(app)  # every partition of the queue
        if not job:
            for history in everything.replays:
                await _say_what_was_trimmed(history, source, first)
        elif (enqueued_ms := job_id_time_ms(job)) is not None:
            index = (await locate(app, [job]))[job] or 0
            history = everything.replays[min(index, len(everything.replays) - 1)]
            await _say_what_was_trimmed(history, Source.events, f"{enqueued_ms}-0")
        selected: list[HistoryRecord] = []
        count = 0
        last_event = "$"
        if not follow or since or until:
            async for record in select(everything):
                if record.source == "event":
                    last_event = record.id
                emit(record)
                if redrive:
                    selected.append(record)
                count += 1
                if limit is not None and count >= limit:
                    break
        lines.flush()
        if table is not None:
            console.print(table)
        if redrive:
            return await _redrive(everything, selected, into, yes)
        if follow:
            kinds = [status] if status else None
            # Go on from the last event printed, so nothing falls in between.
            after = last_event if since else "$"

            def live(record: HistoryRecord) -> None:
                if table is None:
                    emit(record)
                    lines.flush()
                else:
                    console.print(" ".join(_row(record)))

            if len(everything.replays) > 1:  # a blocking read per partition, merged
                await everything.follow(live, after=after, task=task, kinds=kinds, job=job)
            history = everything.replays[0]
            async for record in history.follow(after=after, task=task, kinds=kinds, job=job):
                live(record)
        return 0

    try:
        code = run_with_app(app, body)
    except KeyboardInterrupt:  # Ctrl-C ends --follow
        code = 0
    except _NoHistory as exc:
        typer.echo(f"streamq: no history for job id {exc.job_id!r}", err=True)
        code = 1
    raise typer.Exit(code)


class _Lines:
    """JSON lines through orjson, written to stdout in blocks (100k+ lines/s)."""

    BLOCK = 1000

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def add(self, record: HistoryRecord) -> None:
        self._pending.append(orjson.dumps(record.as_dict()))
        if len(self._pending) >= self.BLOCK:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._pending.append(b"")
            sys.stdout.buffer.write(b"\n".join(self._pending))
            sys.stdout.buffer.flush()
            self._pending = []


async def _say_what_was_trimmed(history: Replay, source: Source, since: str | None) -> None:
    """A note on stderr when the range asked for starts before the retained history."""
    keys = {
        Source.events: [("events", history.app.keys.events)],
        Source.jobs: [
            (f"job messages ({p})", history.app.keys.stream(p))
            for p in history.app.settings.priorities
        ],
        Source.dlq: [],  # requeue and purge delete DLQ entries: no gap to report
    }[source]
    archive = history.archive
    index = history.app.partition_index
    for name, key in keys:
        if index:
            name = f"{name} in partition {index}"
        oldest = await history.trimmed_before(key)
        if archive is not None and oldest is not None:
            archived = await anyio.to_thread.run_sync(archive.oldest, key)
            if archived is not None and bound_key(archived) < bound_key(oldest):
                oldest = archived  # the archive holds what retention trimmed, from here
        if oldest is None or (since is not None and bound_key(since) >= bound_key(oldest)):
            continue
        where = f"the archive at {archive.location}" if archive is not None else "Redis"
        typer.echo(
            f"streamq: note: the history of {name} before {_time(oldest)} (entry {oldest}) "
            f"was trimmed and is not in {where}; the output starts there",
            err=True,
        )


def _time(entry_id: str) -> str:
    moment = dt.datetime.fromtimestamp(bound_key(entry_id)[0] / 1000, dt.UTC)
    return moment.isoformat(timespec="seconds")


class _NoHistory(Exception):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


async def _redrive(
    history: AllReplay, records: list[HistoryRecord], target: str | None, yes: bool
) -> int:
    """Each job back into its own partition (``AllReplay.redrive``), or into ``target``."""
    err = Console(stderr=True)
    into = target or history.app.name
    if not records:
        err.print("nothing selected to re-drive")
        return 0
    selected = counted(len(records), "job")
    if not yes:
        confirmed = await anyio.to_thread.run_sync(
            lambda: typer.confirm(
                f"Re-enqueue {selected} into queue {into}?",
                default=False,
                err=True,
            )
        )
        if not confirmed:
            err.print(f"dry run: {selected} would be re-enqueued into {into}; nothing written")
            return 0
    ids = await history.redrive(records, target)
    err.print(f"re-enqueued {counted(len(ids), 'job')} into {into}")
    return 0


def _table() -> Table:
    table = Table(show_header=True)
    for column in ("time", "source", "kind", "job", "task", "detail"):
        table.add_column(column, overflow="fold")
    return table


def _row(record: HistoryRecord) -> tuple[str, ...]:
    when = record.as_dict()["time"]
    detail = " ".join(f"{k}={record.fields[k]}" for k in _DETAIL if record.fields.get(k))
    return (when, record.source, record.kind, record.job_id or "", record.task or "", detail[:200])
