"""``streamq worker``: run a consumer-group worker until SIGTERM/SIGINT."""

from __future__ import annotations

import errno
from typing import Annotated

import typer

from streamq.app import App
from streamq.cli._common import (
    AppArg,
    JsonLogsOpt,
    LogLevelOpt,
    RedisUrlOpt,
    check_log_level,
    run_with_app,
)
from streamq.cli._load import load_app
from streamq.errors import ConfigError
from streamq.logging import configure_logging, get_logger
from streamq.metrics import WorkerMetrics
from streamq.worker import Worker


def worker(
    app_path: AppArg,
    concurrency: Annotated[int, typer.Option(min=1, help="Handlers running at once.")] = 10,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds in-flight jobs get to finish on SIGTERM.")
    ] = 30.0,
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    name: Annotated[
        str | None,
        typer.Option(help="Consumer name; reuse it across restarts to finish its own jobs first."),
    ] = None,
    janitor: Annotated[
        bool, typer.Option(help="Also run the janitor's duties (one leader per queue).")
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Serve Prometheus metrics on this port (streamq[metrics])."
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address for the metrics endpoint (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    redis_url: RedisUrlOpt = None,
    log_level: LogLevelOpt = "info",
    json_logs: JsonLogsOpt = None,
) -> None:
    """Run a worker: fetch jobs highest priority first and run them."""
    configure_logging(json=json_logs, level=check_log_level(log_level))
    app = load_app(app_path, redis_url)
    metrics = None
    if metrics_port is not None:
        try:
            metrics = WorkerMetrics(app)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--metrics-port") from None
    w = Worker(
        app,
        concurrency=concurrency,
        grace_s=grace,
        burst=burst,
        handle_signals=True,
        consumer=name,
        janitor=janitor,
        metrics=metrics,
    )

    async def body(_: App) -> None:
        if metrics is not None and metrics_port is not None:
            try:
                port = metrics.serve(metrics_port, metrics_host)
            except OSError as exc:
                why = "is already in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc}"
                raise typer.BadParameter(
                    f"cannot serve metrics: {metrics_host}:{metrics_port} {why}",
                    param_hint="--metrics-port",
                ) from None
            get_logger(queue=app.name).info("metrics served", host=metrics_host, port=port)
        try:
            await w.run()
        finally:
            if metrics is not None:
                metrics.close()

    run_with_app(app, body)
    if w.exit_code:  # a second signal cut the grace period short
        raise typer.Exit(w.exit_code)
