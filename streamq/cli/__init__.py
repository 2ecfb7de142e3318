"""The ``streamq`` command line.

Exit codes: 0 success; 1 a job or check failed (the demo saw failures it did
not plan); 2 bad usage or configuration (unknown app path, bad option);
3 the Redis server could not be reached or started.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from streamq.cli import demo, doctor, janitor, replay, stats, worker
from streamq.cli.dlq import dlq_cli
from streamq.cli.server import server_cli

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

cli = typer.Typer(
    name="streamq",
    help="Background jobs on Redis Streams consumer groups.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
cli.command("worker")(worker.worker)
cli.command("janitor")(janitor.janitor)
cli.command("replay")(replay.replay)
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(server_cli, name="server")
cli.command("demo")(demo.demo)
cli.command("stats")(stats.stats)
cli.command("doctor")(doctor.doctor)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamq`` script; returns the exit code."""
    try:
        cli(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name="streamq",
            standalone_mode=True,
        )
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    return EXIT_OK
