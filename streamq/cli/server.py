"""``streamq server start|status|stop``: the embedded server of a data dir.

The server is detached and shared: it runs until ``stop``, whoever started
it, so these commands are how a person finds it, sees what it holds and ends
it. They act on the embedded server even when ``$STREAMQ_REDIS_URL`` points
elsewhere (and say so), since that is the server they name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from streamq import embedded
from streamq.embedded import Embedded, ServerStatus

server_cli = typer.Typer(
    help="Start, inspect or stop the embedded valkey-server (used when no Redis URL is set).",
    no_args_is_help=True,
)

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data dir of the server; default: $STREAMQ_HOME, else ~/.local/share/streamq.",
        show_default=False,
    ),
]


def _server(data_dir: Path | None) -> Embedded:
    return Embedded(data_dir or embedded.data_dir())


def _note_url() -> None:
    if url := os.environ.get("STREAMQ_REDIS_URL"):
        typer.echo(
            f"note: STREAMQ_REDIS_URL is set ({url.split('@')[-1]}); streamq processes "
            "use that server, not the embedded one",
            err=True,
        )


@server_cli.command("start")
def start(data_dir: DataDirOpt = None) -> None:
    """Start the server if it is not running; it runs until `streamq server stop`."""
    server = _server(data_dir)
    server.ensure()
    status = server.status()
    pid = status.pid if status is not None else "?"
    verb = "started" if server.started else "already running:"
    typer.echo(f"{verb} the embedded server (pid {pid}) on {server.url}")
    _note_url()


@server_cli.command("status")
def status(
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Pid, socket, data dir, memory and uptime; exit 3 when it is not running."""
    server = _server(data_dir)
    found = server.status()
    if found is None:
        typer.echo(f"streamq: the embedded server of {server.directory} is not running", err=True)
        raise typer.Exit(3)
    if as_json:
        typer.echo(json.dumps(_as_dict(found)))
        return
    for label, value in (
        ("pid", found.pid),
        ("socket", found.socket),
        ("data dir", found.directory),
        ("version", found.version),
        ("memory", found.used_memory_human),
        ("uptime", _duration(found.uptime_s)),
        ("clients", found.connected_clients),
        ("log", found.log),
    ):
        typer.echo(f"{label:<9} {value}")
    _note_url()


@server_cli.command("stop")
def stop(data_dir: DataDirOpt = None) -> None:
    """Stop the server (it flushes its AOF first); running streamq processes start it again."""
    server = _server(data_dir)
    pid = server.stop()
    if pid is None:
        typer.echo(f"the embedded server of {server.directory} is not running")
    else:
        typer.echo(f"stopped the embedded server (pid {pid})")


def _as_dict(found: ServerStatus) -> dict[str, object]:
    report = dataclasses.asdict(found)
    report["data_dir"] = str(report.pop("directory"))
    report["socket"] = str(report["socket"])
    report["log"] = str(report["log"])
    return report


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m")]
    text = "".join(f"{n}{unit}" for n, unit in parts if n)
    return f"{text}{secs}s"
