"""``streamq janitor``: the janitor's singleton duties alone, until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
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
from streamq.janitor import Janitor
from streamq.logging import configure_logging, get_logger
from streamq.worker import consumer_name


def janitor(
    app_path: AppArg,
    interval: Annotated[
        float | None, typer.Option(min=0.01, help="Seconds between passes (default: the App's).")
    ] = None,
    redis_url: RedisUrlOpt = None,
    log_level: LogLevelOpt = "info",
    json_logs: JsonLogsOpt = None,
) -> None:
    """Promote due delayed jobs and prune idle consumers (workers do this too by default)."""
    configure_logging(json=json_logs, level=check_log_level(log_level))
    app = load_app(app_path, redis_url)
    owner = consumer_name()

    async def body(app: App) -> None:
        log = get_logger(queue=app.name, worker=owner, role="janitor")
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:
                await tg.start(Janitor(app, owner, interval_s=interval).run)
                log.info("janitor started")
                async for signum in signals:
                    log.info("signal: stopping", signal=signal.Signals(signum).name)
                    break
                tg.cancel_scope.cancel()
        log.info("janitor stopped")

    run_with_app(app, body)
