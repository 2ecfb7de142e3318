"""``streamq demo``: see streamq work end to end in a few seconds."""

from __future__ import annotations

import signal
from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamq.demo import PRIORITIES, DemoReport, run_demo
from streamq.embedded import Embedded, data_dir
from streamq.errors import ConfigError
from streamq.logging import configure_logging
from streamq.settings import check_redis_url


def demo(
    jobs: Annotated[int, typer.Option(min=1, max=100_000, help="Jobs per priority.")] = 100,
    concurrency: Annotated[int, typer.Option(min=1, help="Worker concurrency.")] = 20,
    redis_url: Annotated[
        str | None,
        typer.Option(envvar="STREAMQ_REDIS_URL", help="Redis URL; default: the embedded server."),
    ] = None,
    web: Annotated[
        bool,
        typer.Option(
            "--web",
            help="Serve the live demo in the dashboard instead: a pool of worker processes "
            "you size, slow down, fail and hang from the page.",
        ),
    ] = False,
    host: Annotated[
        str, typer.Option(help="--web: address to bind; anything but loopback needs --auth.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="--web: port.")] = 8080,
    auth: Annotated[
        str | None,
        typer.Option(
            envvar="STREAMQ_DASHBOARD_AUTH",
            help="--web: user:password (HTTP Basic) or token:<secret>.",
        ),
    ] = None,
) -> None:
    """Enqueue jobs over three priorities, drain them with a worker, print a summary;
    with --web, serve the live demo page instead."""
    if redis_url:
        check_redis_url(redis_url)  # a bad URL is exit 2 before any output
    if web:
        _web(redis_url, host, port, auth)
        return
    console = Console()
    # Job logs would scroll the progress bars away; errors still show.
    configure_logging(json=False, level="error")
    total = jobs * len(PRIORITIES)
    console.print(f"[bold]streamq demo[/]: {total} jobs over priorities {', '.join(PRIORITIES)}")
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        enqueue_bar = progress.add_task("enqueue", total=total)
        run_bar = progress.add_task("run", total=total)
        # An unusable server ends the run: streamq.cli.main says why (exit 3).
        report = anyio.run(
            lambda: run_demo(
                jobs_per_priority=jobs,
                concurrency=concurrency,
                redis_url=redis_url,
                on_enqueued=lambda n: progress.update(enqueue_bar, completed=n),
                on_done=lambda n: progress.update(run_bar, completed=min(n, total)),
            )
        )
    _summary(console, report)
    if not redis_url and (status := Embedded(data_dir()).status()) is not None:
        console.print(
            f"The embedded server (pid {status.pid}, data in {status.directory}) keeps running "
            "for your next commands; `streamq server stop` stops it."
        )
    if not report.ok:
        raise typer.Exit(1)


def _summary(console: Console, report: DemoReport) -> None:
    table = Table(
        title="summary",
        show_header=True,
        caption=f"retries past their backoff are promoted every {report.promote_interval_s:g} s",
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("jobs enqueued", str(report.enqueued))
    table.add_row("succeeded", str(report.succeeded))
    table.add_row("  after a planned failure and 1 retry", str(report.recovered))
    table.add_row("failed", str(report.failed))
    table.add_row(
        "drain throughput", f"{report.drain_jobs_per_s:,.0f} jobs/s in {report.drain_s:.2f} s"
    )
    table.add_row("waiting on retry backoff", f"{report.backoff_wait_s:.2f} s")
    table.add_row("total time", f"{report.seconds:.2f} s")
    for prio, (first, last) in report.positions().items():
        table.add_row(f"{prio} started at positions", f"{first}–{last}")
    table.add_row("strict priority order", "yes" if report.strict_order else "NO")
    console.print(table)


def _web(redis_url: str | None, host: str, port: int, auth: str | None) -> None:
    """Serve the live demo (``streamq.demo_pool``) until Ctrl-C, then stop its workers."""
    try:
        from streamq.dashboard.server import check_bind, serve
    except ImportError as exc:  # the extra is not installed
        raise ConfigError(
            f"the web demo needs the dashboard's extra: pip install 'streamq[dashboard]' ({exc})"
        ) from None
    from streamq.demo_web.pool import DemoPool

    check_bind(host, auth)
    configure_logging(json=False, level="warning")

    async def main() -> None:
        # uvicorn stops on SIGINT/SIGTERM, then raises the signal again once it has
        # restored the handlers it found: these, so the signal lands here, unheeded,
        # instead of interrupting (SIGINT) or killing (SIGTERM) the pool's shutdown.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM):
            async with DemoPool(redis_url) as pool:
                typer.echo(
                    f"streamq live demo on http://{host}:{port}/ with {len(pool.pids)} worker "
                    "processes (Ctrl-C to stop)",
                    err=True,
                )
                await serve([pool.app], host=host, port=port, auth=auth, demo=pool)

    anyio.run(main)
