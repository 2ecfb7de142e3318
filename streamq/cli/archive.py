"""``streamq archive``: export the queue's history into an archive, or list what it holds."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamq.app import App
from streamq.archive import Archive, ExportResult, FormatError, StreamStatus
from streamq.cli._common import AppArg, RedisUrlOpt, counted, run_with_app
from streamq.cli._load import load_app
from streamq.errors import ConfigError
from streamq.replay import parse_bound
from streamq.stats import format_bytes

CALL_ENTRIES = 50_000
"""Entries per export call: progress is reported between calls."""


def archive(
    app_path: AppArg,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="DIR_OR_URL",
            help="A directory, or an fsspec URL (s3://bucket/prefix; pip install "
            "'streamq[archive]'); default: the App's archive setting ($STREAMQ_ARCHIVE).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Archive history up to this date (whole day), datetime, ms or id."),
    ] = None,
    everything: Annotated[
        bool,
        typer.Option("--all", help="Archive everything in Redis now, the current time window too."),
    ] = False,
    list_only: Annotated[
        bool,
        typer.Option("--list", help="Show what the archive holds per stream; write nothing."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Copy the queue's history (priority streams, events, DLQ) into compressed,
    append-only segment files, from where the archive ends up to now.

    Without --until or --all, every time window (UTC hour) that has ended is
    archived. Entries stay in Redis: retention trims them later. Run it again
    at any time: it continues where the archive ends and never skips an entry,
    even after a crash; reading the archive yields each entry once.
    """
    if until is not None and everything:
        raise typer.BadParameter("give --until or --all, not both", param_hint="--until")
    if list_only and (until is not None or everything):
        raise typer.BadParameter("--list writes nothing; drop --until/--all", param_hint="--list")
    try:
        bound = parse_bound(until, end=True)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--until") from None
    app = load_app(app_path, redis_url)
    to = to or app.settings.archive
    if not to:
        raise typer.BadParameter("give --to DIR_OR_URL, or set STREAMQ_ARCHIVE", param_hint="--to")
    try:
        store = Archive(to, window_s=app.settings.archive_window_s)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--to") from None
    streams = [*app.streams, app.keys.events, app.keys.dlq]
    try:
        if list_only:
            _list(app, store, streams, as_json)
            return
        results = run_with_app(
            app, lambda app: _export(app, store, streams, bound, everything, as_json)
        )
    except FormatError as exc:
        typer.echo(f"streamq: {exc}", err=True)
        raise typer.Exit(1) from None
    _report(app, store, results, as_json)


async def _export(
    app: App, store: Archive, streams: list[str], bound: str | None, everything: bool, quiet: bool
) -> list[ExportResult]:
    redis = await app.redis()
    until = bound or "+"
    whole_windows = bound is None and not everything
    err = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    results = []
    with Progress(*columns, console=err, disable=quiet or not err.is_terminal) as progress:
        for stream in streams:
            # XLEN bounds what this run can write: the bar's total.
            total = int(await redis.xlen(stream))
            bar = progress.add_task(_short(app, stream), total=total or None)
            result = ExportResult(stream)
            while True:
                step = await store.export(
                    redis, stream, until, max_entries=CALL_ENTRIES, whole_windows=whole_windows
                )
                result.entries += step.entries
                result.segments += step.segments
                result.watermark = step.watermark
                progress.update(bar, completed=min(result.entries, total))
                if step.done:
                    break
            results.append(result)
    return results


def _report(app: App, store: Archive, results: list[ExportResult], as_json: bool) -> None:
    entries = sum(r.entries for r in results)
    segments = sum(len(r.segments) for r in results)
    size = sum(r.bytes for r in results)
    if as_json:
        body: dict[str, Any] = {
            "location": store.location, "entries": entries, "segments": segments, "bytes": size,
            "streams": [
                {
                    "stream": r.stream, "entries": r.entries, "bytes": r.bytes,
                    "watermark": r.watermark, "segments": [s.as_dict() for s in r.segments],
                }
                for r in results
            ],
        }  # fmt: skip
        typer.echo(json.dumps(body))
        return
    for r in results:
        upto = f"archived up to {_when(r.watermark)}" if r.watermark else "nothing archived"
        typer.echo(
            f"{_short(app, r.stream)}: {counted(r.entries, 'entry', 'entries')} in "
            f"{counted(len(r.segments), 'segment')} ({format_bytes(r.bytes)}); {upto}"
        )
    typer.echo(
        f"wrote {counted(entries, 'entry', 'entries')} in {counted(segments, 'segment')} "
        f"({format_bytes(size)}) to {store.location}"
    )


def _list(app: App, store: Archive, streams: list[str], as_json: bool) -> None:
    statuses: list[StreamStatus] = [store.status(stream) for stream in streams]
    if as_json:
        body = {"location": store.location, "streams": [s.as_dict() for s in statuses]}
        typer.echo(json.dumps(body))
        return
    table = Table(title=f"{app.name} in {store.location}", show_header=True)
    for column in ("stream", "segments", "entries", "size", "from", "up to", "unindexed"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        entries = status.entries
        table.add_row(
            _short(app, status.stream),
            str(len(status.segments)),
            "?" if entries is None else str(entries),
            format_bytes(status.bytes),
            _when(status.oldest, with_id=False),
            _when(status.watermark, with_id=False),
            str(status.unindexed) if status.unindexed else "",
        )
    Console().print(table)


def _when(entry_id: str | None, *, with_id: bool = True) -> str:
    """``2026-11-01 13:59:59.999Z (1762005599999-3)``."""
    if entry_id is None:
        return "-"
    ms = int(entry_id.partition("-")[0])
    try:
        moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return entry_id
    text = moment.strftime("%Y-%m-%d %H:%M:%S") + f".{ms % 1000:03d}Z"
    return f"{text} ({entry_id})" if with_id else text


def _short(app: App, stream: str) -> str:
    return stream.removeprefix(f"{app.settings.prefix}:{{{app.name}}}:")
