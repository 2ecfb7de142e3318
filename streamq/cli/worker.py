"""``streamq worker``: run a consumer-group worker until SIGTERM/SIGINT.

With ``--processes N`` (N > 1) this process becomes a supervisor
(``streamq.supervisor``) of N such workers, each started with the same
options, its own ``--name`` and the hidden ``--supervisor-fd``; with
``--metrics-port`` the supervisor serves the children's metrics, which they
record in prometheus-client's multiprocess mode (the hidden
``--metrics-multiprocess``).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import anyio
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
from streamq.metrics import MULTIPROC_ENV, ProcessesMetrics, WorkerMetrics
from streamq.supervisor import READY_FD_OPTION, ChildLink, Supervisor, whole_line_output
from streamq.worker import Worker, consumer_name
from streamq.worker.partitions import parse_assignment


def worker(
    app_path: AppArg,
    concurrency: Annotated[int, typer.Option(min=1, help="Handlers running at once.")] = 10,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds in-flight jobs get to finish on SIGTERM.")
    ] = 30.0,
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    name: Annotated[
        str | None,
        typer.Option(
            help="Consumer name; reuse it across restarts to finish its own jobs first "
            "(with --processes: NAME-0, NAME-1, ...)."
        ),
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
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes, each its own consumer, under one supervisor that "
            "restarts them (for CPU-bound jobs: one per core).",
        ),
    ] = 1,
    redis_url: RedisUrlOpt = None,
    log_level: LogLevelOpt = "info",
    json_logs: JsonLogsOpt = None,
    supervisor_fd: Annotated[int | None, typer.Option(READY_FD_OPTION, hidden=True)] = None,
    metrics_multiprocess: Annotated[bool, typer.Option(hidden=True)] = False,
    partitions: Annotated[
        str | None,
        typer.Option(help="Partitions of a partitioned queue to read, e.g. 0,2-5 (default: all)."),
    ] = None,
) -> None:
    """Run a worker: fetch jobs highest priority first and run them."""
    configure_logging(json=json_logs, level=check_log_level(log_level))
    if processes > 1:
        code = _supervise(
            app_path, processes, concurrency=concurrency, grace=grace, burst=burst, name=name,
            janitor=janitor, metrics_port=metrics_port, metrics_host=metrics_host,
            redis_url=redis_url, log_level=log_level, json_logs=json_logs, partitions=partitions,
        )  # fmt: skip
        if code:
            raise typer.Exit(code)
        return
    link = None
    if supervisor_fd is not None:
        link = ChildLink(supervisor_fd)
        link.start()
    try:
        assignment = None if partitions is None else parse_assignment(partitions)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--partitions") from None
    app = load_app(app_path, redis_url)
    metrics = None
    if metrics_port is not None or metrics_multiprocess:
        try:
            metrics = WorkerMetrics(app, multiprocess=metrics_multiprocess)
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
        partitions=assignment,
    )

    async def body(_: App) -> None:
        if metrics is not None and metrics_port is not None and not metrics_multiprocess:
            port = _serve(metrics, metrics_port, metrics_host)
            get_logger(queue=app.name).info("metrics served", host=metrics_host, port=port)
        try:
            if link is None:
                await w.run()
            else:
                async with anyio.create_task_group() as tg:
                    await tg.start(w.run)
                    link.ready()
        finally:
            if metrics is not None:
                metrics.close()

    run_with_app(app, body)
    if w.exit_code:  # a second signal cut the grace period short
        raise typer.Exit(w.exit_code)


def _serve(metrics: WorkerMetrics | ProcessesMetrics, port: int, host: str) -> int:
    try:
        return metrics.serve(port, host)
    except OSError as exc:
        why = "is already in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc}"
        raise typer.BadParameter(
            f"cannot serve metrics: {host}:{port} {why}", param_hint="--metrics-port"
        ) from None


def _supervise(
    app_path: str,
    processes: int,
    *,
    concurrency: int,
    grace: float,
    burst: bool,
    name: str | None,
    janitor: bool,
    metrics_port: int | None,
    metrics_host: str,
    redis_url: str | None,
    log_level: str,
    json_logs: bool | None,
    partitions: str | None = None,
) -> int:
    """Run ``processes`` workers with these options under a supervisor; its exit code."""
    argv = [
        sys.executable, "-m", "streamq", "worker", app_path,
        "--concurrency", str(concurrency), "--grace", repr(grace),
        "--burst" if burst else "--no-burst", "--janitor" if janitor else "--no-janitor",
        "--log-level", log_level,
    ]  # fmt: skip
    if json_logs is not None:
        argv.append("--json" if json_logs else "--no-json")
    if partitions is not None:
        argv += ["--partitions", partitions]
    env = dict(os.environ)
    env.pop(MULTIPROC_ENV, None)
    env.pop(MULTIPROC_ENV.lower(), None)
    if redis_url:  # in the environment, not on a command line everyone can read
        env["STREAMQ_REDIS_URL"] = redis_url
    metrics = None
    if metrics_port is not None:
        try:
            metrics = ProcessesMetrics()
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--metrics-port") from None
    try:
        if metrics is not None and metrics_port is not None:
            port = _serve(metrics, metrics_port, metrics_host)
            get_logger().info("metrics served", host=metrics_host, port=port)
            argv.append("--metrics-multiprocess")
            env.update(metrics.env())
        base = name or consumer_name()
        supervisor = Supervisor(
            argv, [f"{base}-{i}" for i in range(processes)], grace_s=grace, burst=burst,
            env=env, observer=metrics,
        )  # fmt: skip
        whole_line_output()
        return supervisor.run()
    finally:
        if metrics is not None:
            metrics.close()
