"""Lifespan: what a worker opens before its first job and closes after its last.

``App("shop", lifespan=fn)``: ``fn(app)`` returns an async context manager.
``Worker.run`` enters it once (so once per ``streamq worker`` process) after
connecting and before the first fetch, and exits it after the last outcome
was recorded on shutdown. What it yields (a DB pool, an HTTP client) is every
handler's and every middleware hook's ``current_job().state``::

    @dataclass
    class Resources:
        db: Pool

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[Resources]:
        async with open_pool() as db:
            yield Resources(db)

    app = App("shop", lifespan=lifespan)

    @app.task
    async def charge(order: str) -> None:
        db = streamq.current_job().state_as(Resources).db

A lifespan that raises on startup makes ``Worker.run`` raise
``LifespanError`` having fetched nothing (``streamq worker`` prints one line
and exits 1; the worker's log has the traceback). One that raises on exit
raises ``LifespanError`` too, after every outcome was recorded.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from streamq.errors import StreamqError

if TYPE_CHECKING:
    from streamq.app import App

Lifespan = Callable[["App"], AbstractAsyncContextManager[Any]]


class LifespanError(StreamqError):
    """The App's lifespan raised on a worker's startup (nothing was fetched) or on
    its exit (after every outcome was recorded); ``__cause__`` is what it raised."""

    def __init__(self, app: App, phase: str, error: BaseException) -> None:
        super().__init__(f"the lifespan of {app!r} failed on {phase}: {_describe(error)}")
        self.phase = phase


def _describe(error: BaseException) -> str:
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not hide the error's type
        message = "(str() failed)"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@asynccontextmanager
async def lifespan_state(app: App, log: Any) -> AsyncIterator[Any]:
    """Enter the App's lifespan (if any); yields its state (None without one)."""
    if app.lifespan is None:
        yield None
        return
    try:
        manager = app.lifespan(app)
        state = await manager.__aenter__()
    except Exception as exc:
        log.exception("lifespan failed on startup")
        raise LifespanError(app, "startup", exc) from exc
    try:
        yield state
    except BaseException:
        # The worker failed or was cancelled: the lifespan learns why, as in
        # ``async with``, and the worker's error goes on (never swallowed).
        await manager.__aexit__(*sys.exc_info())
        raise
    try:
        await manager.__aexit__(None, None, None)
    except Exception as exc:
        log.exception("lifespan failed on shutdown")
        raise LifespanError(app, "shutdown", exc) from exc
