"""``streamq dashboard``: serve the web dashboard of one or more Apps."""

from __future__ import annotations

import contextlib
from typing import Annotated

import anyio
import typer

from streamq.cli._common import RedisUrlOpt
from streamq.cli._load import load_app
from streamq.errors import ConfigError


def dashboard(
    app_paths: Annotated[
        list[str], typer.Argument(metavar="APP...", help="module:attribute of each App to show")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs --auth.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8080,
    auth: Annotated[
        str | None,
        typer.Option(
            envvar="STREAMQ_DASHBOARD_AUTH",
            help="user:password (HTTP Basic) or token:<secret> (bearer, or ?token= once).",
        ),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Hide every action and refuse POSTs.")
    ] = False,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Serve the dashboard: queues, workers, jobs, the DLQ, delayed jobs, schedules."""
    try:
        from streamq.dashboard.server import check_bind, serve
    except ImportError as exc:  # the extra is not installed
        raise ConfigError(
            f"the dashboard needs its extra: pip install 'streamq[dashboard]' ({exc})"
        ) from None
    check_bind(host, auth)  # before importing the user's modules: exit 2 at once
    apps = [load_app(path, redis_url) for path in app_paths]

    async def main() -> None:
        try:
            await serve(apps, host=host, port=port, auth=auth, read_only=read_only)
        finally:
            with anyio.CancelScope(shield=True):
                for app in apps:
                    await app.close()

    typer.echo(f"streamq dashboard on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    # uvicorn shuts down gracefully, then raises the signal again: Ctrl-C is how this ends.
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(main)
