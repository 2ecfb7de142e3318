"""``streamq worker``: run a consumer-group worker until SIGTERM/SIGINT."""

from __future__ import annotations

from typing import Annotated

import anyio
import typer
from redis.exceptions import ConnectionError as RedisConnectionError

from streamq.cli._load import load_app
from streamq.errors import EmbeddedServerError
from streamq.logging import configure_logging
from streamq.worker import Worker


def worker(
    app_path: Annotated[str, typer.Argument(metavar="APP", help="module:attribute of your App")],
    concurrency: Annotated[int, typer.Option(min=1, help="Handlers running at once.")] = 10,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds in-flight jobs get to finish on SIGTERM.")
    ] = 30.0,
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    redis_url: Annotated[
        str | None,
        typer.Option(envvar="STREAMQ_REDIS_URL", help="Redis URL; default: the embedded server."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    json_logs: Annotated[
        bool | None, typer.Option("--json/--no-json", help="Default: JSON unless on a terminal.")
    ] = None,
) -> None:
    """Run a worker: fetch jobs highest priority first and run them."""
    if log_level.lower() not in {"debug", "info", "warning", "error"}:
        raise typer.BadParameter(f"unknown level {log_level!r}", param_hint="--log-level")
    configure_logging(json=json_logs, level=log_level)
    app = load_app(app_path, redis_url)
    w = Worker(app, concurrency=concurrency, grace_s=grace, burst=burst, handle_signals=True)

    async def main() -> None:
        async with app:
            await w.run()

    try:
        anyio.run(main)
    except (EmbeddedServerError, RedisConnectionError) as exc:
        typer.echo(f"streamq: {exc}", err=True)
        raise typer.Exit(3) from None
