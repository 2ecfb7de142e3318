"""Helpers shared by subcommands: options, durations, running with an App."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import anyio
import typer

from streamq.app import App
from streamq.keytypes import wrong_types_named

T = TypeVar("T")

AppArg = Annotated[str, typer.Argument(metavar="APP", help="module:attribute of your App")]
RedisUrlOpt = Annotated[
    str | None,
    typer.Option(envvar="STREAMQ_REDIS_URL", help="Redis URL; default: the embedded server."),
]
LogLevelOpt = Annotated[str, typer.Option(help="debug, info, warning or error.")]
JsonLogsOpt = Annotated[
    bool | None, typer.Option("--json/--no-json", help="Default: JSON unless on a terminal.")
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` → seconds; exit 2 otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(
            f"{text!r} is not a duration like 90s, 15m, 12h or 7d", param_hint=option
        )
    return float(match[1]) * _UNIT_S[match[2]]


def check_log_level(level: str) -> str:
    if level.lower() not in {"debug", "info", "warning", "error"}:
        raise typer.BadParameter(f"unknown level {level!r}", param_hint="--log-level")
    return level


def run_with_app(app: App, body: Callable[[App], Awaitable[T]], *, connect: bool = True) -> T:
    """Run ``body`` with the App connected (``connect=False``: ``body`` connects
    when it wants to), then close it.

    Failures go up to ``streamq.cli.main``, which prints the expected ones
    (an unreachable or too old server: exit 3) as one line. A WRONGTYPE from
    a queue key becomes a WrongKeyType that names the key (exit 3 too).
    """

    async def main() -> T:
        if connect:
            async with app, wrong_types_named(app):
                return await body(app)
        try:
            async with wrong_types_named(app):
                return await body(app)
        finally:
            with anyio.CancelScope(shield=True):
                await app.close()

    return anyio.run(main)


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 entry``, ``2 entries``: the CLI never says ``1 entries``."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"
