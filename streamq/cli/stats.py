"""``streamq stats``: a queue's depth, lag, pending work, consumers, throughput and history."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Annotated

import anyio
import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamq.app import App
from streamq.cli._common import AppArg, RedisUrlOpt, run_with_app
from streamq.cli._load import load_app
from streamq.partition_ops import collect_all
from streamq.stats import (
    History,
    HistoryStats,
    PriorityStats,
    QueueStats,
    format_bytes,
    format_duration,
)


def stats(
    app_path: AppArg,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per snapshot.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option(min=0.01, help="Seconds between refreshes with --watch.")
    ] = 2.0,
    count: Annotated[
        int | None, typer.Option(min=1, hidden=True, help="Stop after this many snapshots.")
    ] = None,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Per priority: length, lag, pending, oldest pending; delayed, DLQ, consumers, jobs/s;
    per history stream: entries, how far back they reach, memory; and what cuts it short."""
    app = load_app(app_path, redis_url)
    console = Console()
    # Redrawing in place needs a terminal; piped output gets one snapshot after another.
    live = watch and not as_json and console.is_terminal
    snapshots = count if count is not None else (None if watch else 1)

    async def body(app: App) -> None:
        taken = 0
        with Live(console=console, auto_refresh=False) if live else _NoLive() as screen:
            while True:
                snapshot = await collect_all(app)  # every partition, summed
                taken += 1
                if as_json:
                    typer.echo(json.dumps(snapshot.to_dict()))
                elif screen is not None:
                    screen.update(render(snapshot), refresh=True)
                else:
                    console.print(render(snapshot))
                if snapshots is not None and taken >= snapshots:
                    return
                await anyio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how --watch ends
        run_with_app(app, body)


class _NoLive:
    """Stands in for rich's Live when output is not redrawn in place."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def render(snapshot: QueueStats) -> RenderableType:
    """The table ``streamq stats`` prints: priorities, totals, consumers, then history."""
    when = datetime.fromtimestamp(snapshot.server_time_ms / 1000).strftime("%H:%M:%S")
    table = Table(title=f"queue {snapshot.queue} at {when}", title_justify="left")
    for column in ("priority", "length", "lag", "pending", "oldest pending", "consumers"):
        table.add_column(column, justify="left" if column == "priority" else "right")
    for prio in snapshot.priorities:
        oldest = prio.oldest_pending_age_s
        table.add_row(
            prio.priority, str(prio.length), _lag(prio), str(prio.pending),
            "-" if oldest is None else format_duration(oldest), str(len(prio.consumers)),
        )  # fmt: skip
    t = snapshot.throughput
    lines: list[RenderableType] = [
        table,
        Text(f"delayed {snapshot.delayed}   DLQ {snapshot.dlq}"),
        Text(
            f"last {t.window_s:.0f} s: {t.per_s:.2f} jobs/s "
            f"(succeeded {t.succeeded}, failed {t.failed}, retried {t.retried}, dead {t.dead})"
        ),
    ]
    if any(p.lag is None or p.lag_estimated for p in snapshot.priorities):
        lines.append(
            Text(
                "lag ~N: estimate (entries were deleted after the group's position, so it "
                "may count them); ?: the server cannot tell",
                style="dim",
            )
        )
    consumers = snapshot.consumers
    if consumers:
        people = Table(title="consumers", title_justify="left")
        for column in ("consumer", "pending", "idle"):
            people.add_column(column, justify="left" if column == "consumer" else "right")
        for c in consumers:
            people.add_row(c.name, str(c.pending), format_duration(c.idle_ms / 1000))
        lines.append(people)
    else:
        lines.append(Text("no consumers (no worker has read this queue yet)"))
    lines += _history(snapshot.history)
    return Group(*lines)


def _history(history: History) -> list[RenderableType]:
    table = Table(title="history", title_justify="left")
    for column in ("stream", "entries", "reaches back", "memory"):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for h in history.streams:
        memory = "unknown" if h.memory_bytes is None else format_bytes(h.memory_bytes)
        table.add_row(h.name, str(h.length), _reach(h), memory)
    total, per_job = history.memory_bytes, history.bytes_per_retained_job
    if total is None:
        summary = "history memory unknown: the server would not run MEMORY USAGE"
    elif per_job is None:
        summary = f"history {format_bytes(total)} in all"
    else:
        summary = (
            f"history {format_bytes(total)} in all, "
            f"~{format_bytes(per_job)} per retained job (estimate)"
        )
    lines: list[RenderableType] = [table, Text(summary)]
    lines += [Text(f"warning: {w}", style="yellow") for w in history.warnings]
    return lines


def _reach(h: HistoryStats) -> str:
    if h.oldest_ms is None or h.reach_s is None:
        return "-"
    oldest = datetime.fromtimestamp(h.oldest_ms / 1000)
    since = oldest.strftime("%Y-%m-%d %H:%M" if h.reach_s >= 86400 else "%H:%M:%S")
    return f"{format_duration(h.reach_s)} (since {since})"


def _lag(prio: PriorityStats) -> str:
    if prio.lag is None:
        return "?"
    return f"~{prio.lag}" if prio.lag_estimated else str(prio.lag)
