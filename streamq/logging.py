"""Logging: the application's choice when used as a library, structlog output for the CLI.

streamq never configures logging itself; entry points (the CLI, or an
application) do. Its loggers follow whatever the application set up:

- structlog configured (``structlog.configure``, ``configure_logging``, or
  ``structlog.testing.capture_logs``): events go through that configuration;
- otherwise: through the stdlib logger ``streamq``. Unconfigured, Python's
  convention for a library applies: nothing below warning is shown, and
  warnings and errors reach stderr through logging's last-resort handler.
  ``logging.basicConfig(level="INFO")`` shows the rest.

The choice is made when a logger is first used, and again whenever the
configuration changes, so a logger created before the application set up
logging (a Worker built first) still follows it. Job events are logged with
job id, task, queue and attempt.

``configure_logging`` (the CLI's) prints JSON lines when stdout is not a
terminal and console output when it is; its tracebacks never show frame
locals, which could hold a job's payload or a URL with its password.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LOGGER_NAME = "streamq"


def configure_logging(*, json: bool | None = None, level: str = "info") -> None:
    """Set up structlog for a streamq process; ``json=None`` picks by ``isatty()``."""
    use_json = not sys.stdout.isatty() if json is None else json
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ]
    else:
        colors = sys.stdout.isatty()
        formatter: Any = (
            structlog.dev.RichTracebackFormatter(show_locals=False)
            if colors
            else structlog.dev.plain_traceback
        )
        processors.append(
            structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=formatter)
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A logger carrying ``context``; see the module's docstring for where it writes."""
    return StreamqLogger(context)


class StreamqLogger:
    """Binds context now, picks structlog's configuration or stdlib logging when used."""

    __slots__ = ("_context", "_key", "_target")

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context
        self._key: tuple[Any, ...] = ()
        self._target: Any = None

    def bind(self, **values: Any) -> StreamqLogger:
        return StreamqLogger({**self._context, **values})

    def _logger(self) -> Any:
        config = structlog.get_config()
        configured = structlog.is_configured()
        # Identity of what a bound logger captures: a new configure() call
        # replaces these; capture_logs edits the processor list in place.
        key = (
            configured,
            id(config["processors"]),
            config["wrapper_class"],
            config["logger_factory"],
        )
        if key != self._key or self._target is None:
            base = structlog.get_logger(LOGGER_NAME) if configured else _stdlib_logger()
            self._target = base.bind(**self._context)
            self._key = key
        return self._target

    def debug(self, event: str, **kw: Any) -> Any:
        return self._logger().debug(event, **kw)

    def info(self, event: str, **kw: Any) -> Any:
        return self._logger().info(event, **kw)

    def warning(self, event: str, **kw: Any) -> Any:
        return self._logger().warning(event, **kw)

    def error(self, event: str, **kw: Any) -> Any:
        return self._logger().error(event, **kw)

    def exception(self, event: str, **kw: Any) -> Any:
        return self._logger().exception(event, **kw)


def _stdlib_logger() -> Any:
    return structlog.wrap_logger(
        logging.getLogger(LOGGER_NAME),
        processors=[
            structlog.stdlib.filter_by_level,  # drops disabled levels before any work
            structlog.contextvars.merge_contextvars,
            _render_for_stdlib,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
    )


def _render_for_stdlib(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> tuple[tuple[str], dict[str, Any]]:
    """``event key=value ...`` as the record's message; the traceback is stdlib's to format."""
    exc_info = event_dict.pop("exc_info", None)
    event = str(event_dict.pop("event", ""))
    fields = " ".join(f"{key}={_value(value)}" for key, value in event_dict.items())
    message = f"{event} {fields}" if fields else event
    return (message,), ({"exc_info": exc_info} if exc_info else {})


def _value(value: Any) -> str:
    text = str(value)
    if isinstance(value, str) and (not text or any(c in text for c in " \t\n='\"")):
        return repr(text)
    return text
