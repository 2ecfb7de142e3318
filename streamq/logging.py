"""Logging: structlog, JSON when stdout is not a terminal, readable when it is.

The library never configures logging at import; entry points (the CLI, or an
application) call ``configure_logging`` once. Job events are logged through
``job_logger`` so each one carries job id, task, queue and attempt.
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
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger(LOGGER_NAME).bind(**context)
