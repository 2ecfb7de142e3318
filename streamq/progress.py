"""Progress reports from inside a handler, and the running job's context.

The worker sets a context variable around each handler call, so a handler
needs no extra parameter to learn its job id or to report progress:

    @app.task
    async def resize_all(paths: list[str]) -> None:
        for i, path in enumerate(paths, 1):
            ...
            await streamq.progress(100 * i / len(paths), f"resized {i}/{len(paths)}")

Sync handlers (run in worker threads, which inherit the context) call
``progress_sync``.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.from_thread
import anyio.lowlevel

from streamq.envelope import EMPTY_HEADERS
from streamq.errors import JobCancelled
from streamq.keys import GROUP

if TYPE_CHECKING:
    from streamq.app import App

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler may know about the job it runs."""

    app: App
    job_id: str
    task: str
    attempt: int
    deliveries: int
    worker: str
    wait_marked: Callable[[], Awaitable[None]] | None = field(
        default=None, repr=False, compare=False
    )
    """Returns once the job's status says running (the worker writes that mark lazily)."""
    loop_token: anyio.lowlevel.EventLoopToken | None = field(
        default=None, repr=False, compare=False
    )
    """The worker's event loop, for ``progress_sync`` from a handler thread."""
    _stop_reason: list[str] = field(default_factory=list, repr=False, compare=False)
    """Non-empty once a stop was requested, its first entry the reason (a list, not a
    ``threading.Event``: one is built per job, and appending is atomic for the
    handler thread that reads it)."""
    stream: str = ""
    """The priority stream the job's message was read from: with ``msg_id`` and
    ``deliveries`` it fences ``progress()`` like an outcome (a worker that lost
    the message cannot report on the new run). Empty: fenced on the status only."""
    msg_id: bytes | str = b""
    """The stream entry id of the message this run was delivered."""
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY_HEADERS, compare=False)
    """The job's string headers (read-only), set at enqueue by the caller
    (``with_options(headers=...)``) or a middleware's ``on_enqueue``."""
    state: Any = field(default=None, compare=False)
    """What the App's lifespan yielded in this worker (None without a lifespan).
    ``state_as(cls)`` returns it typed."""
    _cancelled: list[bool] = field(default_factory=list, repr=False, compare=False)
    """Non-empty once cancelled (a list, not another Event: one is built per job)."""
    deadline: float | None = None
    """When the handler's timeout ends, in ``time.monotonic()`` seconds (the clock of
    ``anyio.current_time()`` on asyncio); None: no timeout. The worker enforces it
    with a scope of its own, so ``anyio.current_effective_deadline()`` does not
    show it: pass ``time_left()`` on to the calls a handler makes."""

    def time_left(self) -> float | None:
        """Seconds until the handler's timeout (0 once past it); None: no timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def state_as(self, cls: type[S]) -> S:
        """The lifespan's state as a ``cls`` (TypeError if it is not one).

        ``state`` is typed ``Any``, as the worker cannot know what a user's
        lifespan yields; this checks it at run time and gives the type checker
        the class: ``db = current_job().state_as(Resources).db``.
        """
        state = self.state
        if not isinstance(state, cls):
            raise TypeError(
                f"the lifespan's state is a {type(state).__name__}, not a {cls.__name__}"
            )
        return state

    @property
    def stop_requested(self) -> bool:
        """True once the worker wants this handler to stop (it ran past its timeout,
        or its job was cancelled: ``cancel_requested``).

        Async handlers are cancelled; a sync handler cannot be, so a long one
        should check this between steps and return.
        """
        return bool(self._stop_reason)

    @property
    def stop_reason(self) -> str:
        return self._stop_reason[0] if self._stop_reason else ""

    def request_stop(self, reason: str) -> None:
        if not self._stop_reason:
            self._stop_reason.append(reason)

    @property
    def cancel_requested(self) -> bool:
        """True once the job was cancelled while it runs (``Job.cancel``).

        Async handlers are cancelled at their next await. A sync handler
        cannot be: it should check this (or ``stop_requested``, which is set
        too) between steps and stop by raising (``raise_if_cancelled``). A
        handler that returns a value anyway is recorded as succeeded: its
        work is done.
        """
        return bool(self._cancelled)

    def request_cancel(self) -> None:
        """Tell the handler its job was cancelled (the worker's cancel watcher calls this)."""
        self._cancelled.append(True)
        self.request_stop("cancelled on request")

    def raise_if_cancelled(self) -> None:
        """Raise ``JobCancelled`` once the job was cancelled: a sync handler's way to stop."""
        if self._cancelled:
            raise JobCancelled(self.job_id)


class DeferredContext:
    """A running async job's ``JobContext``, built the first time it is asked for.

    Most handlers never call ``current_job()``: building the frozen context (16
    fields) for every job cost more than running a no-op handler. The worker
    sets this instead for an async handler without middleware hooks; it is only
    used on the event loop's thread (the handler, the cancel watcher), so
    building it once there needs no lock. A sync handler (another thread) and
    middleware get the real ``JobContext`` up front.
    """

    __slots__ = ("_args", "_built", "_kwargs", "attempt", "job_id", "task")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._built: JobContext | None = None
        self.job_id: str = args[1]
        self.task: str = args[2]
        self.attempt: int = args[3]

    def get(self) -> JobContext:
        built = self._built
        if built is None:
            built = self._built = JobContext(*self._args, **self._kwargs)
        return built

    def request_cancel(self) -> None:
        self.get().request_cancel()


_current: contextvars.ContextVar[JobContext | DeferredContext | None] = contextvars.ContextVar(
    "streamq_job", default=None
)


def current_job() -> JobContext:
    """The job the calling handler runs; RuntimeError outside a handler."""
    context = _current.get()
    if context is None:
        raise RuntimeError("not inside a streamq handler")
    if isinstance(context, DeferredContext):
        return context.get()
    return context


async def progress(percent: float, message: str = "") -> bool:
    """Record progress (0–100) of the running job; False if it is no longer running
    (finished, or its message was taken over by another worker or delivery).

    Lands in the job hash (``job.progress()``) and the events stream.
    """
    if not isinstance(percent, int | float) or not math.isfinite(percent):
        raise ValueError(f"percent must be a finite number, got {percent!r}")
    ctx = current_job()
    if ctx.wait_marked is not None:
        await ctx.wait_marked()  # progress is recorded only while the job is marked running
    app = ctx.app
    scripts = await app.scripts()
    return await scripts.progress(
        job_key=app.keys.job(ctx.job_id),
        events=app.keys.events,
        percent=min(100.0, max(0.0, float(percent))),
        message=message[:1000],
        now_ms=int(time.time() * 1000),
        job_id=ctx.job_id,
        task=ctx.task,
        attempt=ctx.attempt,
        worker=ctx.worker,
        stream=ctx.stream or None,
        group=GROUP,
        msg_id=ctx.msg_id,
        deliveries=ctx.deliveries,
    )


def progress_sync(percent: float, message: str = "") -> bool:
    """``progress`` for sync handlers, which run in worker threads."""
    ctx = current_job()  # the clear error outside a handler, before anyio's own
    return anyio.from_thread.run(progress, percent, message, token=ctx.loop_token)


def set_current(
    context: JobContext | DeferredContext | None,
) -> contextvars.Token[JobContext | DeferredContext | None]:
    return _current.set(context)


def reset_current(token: contextvars.Token[JobContext | DeferredContext | None]) -> None:
    _current.reset(token)
