"""Logging: the application's choice when used as a library, structlog output for the CLI.

streamq never configures logging itself; entry points (the CLI, or an
application) do. Its loggers follow whatever the application set up:

- structlog configured (``structlog.configure``, ``configure_logging``, or
  ``structlog.testing.capture_logs``): events go through that configuration;
- otherwise: through the stdlib logger ``streamq``. Unconfigured, Python's
  convention for a library applies: nothing below warning is shown, and
  warnings and errors reach stderr through logging's last-resort handler.
  ``logging.basicConfig(level="INFO")`` shows the rest.

The choice is made at each call (the structlog logger is rebuilt when
structlog's configuration changes), so a logger created before the
application set up logging (a Worker built first) still follows it. Job
events are logged with job id, task, queue and attempt.

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

    def debug(self, event: str, **kw: Any) -> None:
        self._log(logging.DEBUG, "debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log(logging.INFO, "info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log(logging.WARNING, "warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log(logging.ERROR, "error", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._log(logging.ERROR, "exception", event, kw)

    def enabled_for(self, level: int) -> bool:
        """Whether a call at ``level`` would write anything: a caller that logs a line
        per job checks once per batch instead of building lines that are dropped."""
        if structlog.is_configured():
            target = self._structlog()
            check = getattr(target, "is_enabled_for", None) or getattr(target, "isEnabledFor", None)
            return True if check is None else bool(check(level))
        return _STDLIB.isEnabledFor(level)

    def _log(self, level: int, method: str, event: str, kw: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(self._structlog(), method)(event, **kw)
        elif _STDLIB.isEnabledFor(level):
            exc_info = kw.pop("exc_info", method == "exception")
            fields = {**structlog.contextvars.get_contextvars(), **self._context, **kw}
            # stacklevel 3: the record names the caller of info() and friends.
            _STDLIB.log(level, _message(event, fields), exc_info=exc_info or None, stacklevel=3)

    def _structlog(self) -> Any:
        """A structlog logger bound to the context, rebuilt when the configuration changes."""
        config = structlog.get_config()
        # What a bound logger captures: a configure() call replaces these;
        # capture_logs edits the processor list in place (same identity).
        key = (id(config["processors"]), config["wrapper_class"], config["logger_factory"])
        if key != self._key or self._target is None:
            self._target = structlog.get_logger(LOGGER_NAME).bind(**self._context)
            self._key = key
        return self._target


_STDLIB = logging.getLogger(LOGGER_NAME)


def _message(event: str, fields: dict[str, Any]) -> str:
    """``event key=value ...``: one line a plain stdlib formatter shows in full."""
    if not fields:
        return event
    return f"{event} " + " ".join(f"{key}={_value(value)}" for key, value in fields.items())


def _value(value: Any) -> str:
    text = str(value)
    if isinstance(value, str) and (not text or any(c in text for c in " \t\n='\"")):
        return repr(text)
    return text
