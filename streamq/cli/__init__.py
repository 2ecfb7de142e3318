"""The ``streamq`` command line.

Exit codes: 0 success; 1 a job or check failed (the demo saw failures it did
not plan, doctor found a problem, no such job or DLQ entry, a job to cancel
had already finished, the App's lifespan
raised in a worker: its traceback is in the worker's log); 2 bad usage or
configuration (unknown app path, bad option or URL, an App module that raises
ConfigError); 3 the Redis server cannot be used (unreachable, silent, wrong or
missing password, older than Redis 7.0, a queue key of the wrong type, an
error reply) or the embedded one could not be started.

``main`` is the one error boundary: an expected failure prints one line,
``streamq: <what is wrong>``, on stderr and returns its exit code. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Annotated

import typer
import typer.core
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

import streamq
from streamq.cli import acl, archive, dashboard, demo, doctor, janitor, replay, stats, worker
from streamq.cli.cancel import cancel, queue_cli
from streamq.cli.cron import cron_cli
from streamq.cli.dlq import dlq_cli
from streamq.cli.server import server_cli
from streamq.errors import ConfigError, JobNotFound, ServerError, WrongKeyType
from streamq.lifespan import LifespanError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

cli = typer.Typer(
    name="streamq",
    help="Background jobs on Redis Streams consumer groups.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # click's plain help: typer's rich help shows a type even for flags
    # ("--burst --no-burst <bool>"), and wraps ids and options in boxes.
    rich_markup_mode=None,
)
cli.command("worker")(worker.worker)
cli.command("janitor")(janitor.janitor)
cli.command("replay")(replay.replay)
cli.command("archive")(archive.archive)
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(server_cli, name="server")
cli.command("demo")(demo.demo)
cli.command("stats")(stats.stats)
cli.command("doctor")(doctor.doctor)
cli.add_typer(cron_cli, name="cron")
cli.command("cancel")(cancel)
cli.add_typer(queue_cli, name="queue")
cli.command("dashboard")(dashboard.dashboard)
cli.command("acl")(acl.acl)


def _print_version(value: bool) -> None:
    if value:
        try:
            version = importlib.metadata.version("streamq")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree
            version = streamq.__version__
        typer.echo(f"streamq {version}")
        raise typer.Exit()


@cli.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


# typer ships its own copy of click (0.29) or uses click; either way these are
# the classes its BadParameter derives from.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)
_UsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamq`` script; returns the exit code."""
    try:
        result = cli(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name="streamq",
            standalone_mode=False,
        )
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    except Exception as exc:
        failure = _failure(exc)
        if failure is None:
            raise
        code, message = failure
        if message:
            typer.echo(f"streamq: {' '.join(message.split())}", err=True)
        return code
    return result if isinstance(result, int) else EXIT_OK


def _failure(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and message of an expected failure; None for a bug."""
    if isinstance(exc, BaseExceptionGroup):  # from a task group: report the first
        failures = [_failure(inner) for inner in exc.exceptions]
        if failures and all(f is not None for f in failures):
            return failures[0]
        return None
    if isinstance(exc, _UsageError):
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help is already printed
            return EXIT_USAGE, ""
        return EXIT_USAGE, _usage_message(exc)
    if isinstance(exc, typer.Abort):
        return EXIT_FAILED, "aborted"
    if isinstance(exc, _ClickException):
        return int(getattr(exc, "exit_code", EXIT_FAILED)), _format(exc)
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, ServerError | WrongKeyType):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, JobNotFound | LifespanError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, RedisTimeoutError):
        return EXIT_UNREACHABLE, f"Redis did not answer in time: {exc}"
    if isinstance(exc, RedisConnectionError):  # AuthenticationError included
        return EXIT_UNREACHABLE, f"cannot reach Redis: {exc}"
    if isinstance(exc, NoPermissionError):
        return EXIT_UNREACHABLE, f"Redis refused a command: {exc} (see `streamq doctor`)"
    if isinstance(exc, ResponseError):
        return EXIT_UNREACHABLE, f"Redis answered with an error: {exc}"
    return None


def _format(exc: Exception) -> str:
    format_message = getattr(exc, "format_message", None)
    return str(format_message() if callable(format_message) else exc)


def _usage_message(exc: Exception) -> str:
    """``<error> (Usage: streamq worker [OPTIONS] APP; --help for more)``."""
    message = _format(exc)
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    usage = " ".join(str(ctx.get_usage()).split())
    return f"{message} ({usage}; --help for more)"
