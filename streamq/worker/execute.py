"""Executing one job: look up the task, call it under its timeout, capture the result.

Every way a handler can end becomes an ``Execution``; none of them escapes
into the worker (SystemExit and KeyboardInterrupt raised by a handler are
failures of that job, not requests to stop the worker). Cancellation from
outside (shutdown past the grace period) is the one exception that propagates:
that job did not finish, so nothing about it may be recorded.
"""

from __future__ import annotations

import functools
import time
import traceback
from dataclasses import dataclass
from typing import Any

import anyio

from streamq.envelope import Envelope, PoisonMessage, decode_arguments
from streamq.errors import SerializationError
from streamq.serializers import Serializer
from streamq.task import Task

_MAX_TRACEBACK_CHARS = 16_000


@dataclass(slots=True)  # not frozen: built per job, and frozen init costs
class Execution:
    """How a handler ended: ``ok`` with an encoded result, or an error."""

    ok: bool
    duration_ms: int
    result: bytes = b""
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    retryable: bool = True
    """False when running again cannot help (the result cannot be encoded)."""
    exception: BaseException | None = None
    """What the handler raised (None for success and timeouts); decides retry_on."""


def load_arguments(serializer: Serializer, envelope: Envelope) -> tuple[list[Any], dict[str, Any]]:
    if envelope.content_type != serializer.content_type:
        raise PoisonMessage(
            f"content type {envelope.content_type!r} is not {serializer.content_type!r}",
            envelope.job_id,
            envelope.task,
        )
    try:
        value = serializer.loads(envelope.payload)
    except ValueError as exc:
        raise PoisonMessage(
            f"payload cannot be decoded: {exc}", envelope.job_id, envelope.task
        ) from None
    try:
        return decode_arguments(value)
    except PoisonMessage as exc:
        raise PoisonMessage(exc.reason, envelope.job_id, envelope.task) from None


async def execute(
    task: Task[Any, Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    serializer: Serializer,
    thread_limiter: anyio.CapacityLimiter,
    timeout_s: float | None,
) -> Execution:
    started = time.perf_counter()
    value: Any = None
    try:
        # move_on_after, not fail_after: a TimeoutError the handler raises itself
        # (a socket timeout) is its own failure, subject to retry_on, not ours.
        with anyio.move_on_after(timeout_s) as scope:
            if task.is_async:
                value = await task.fn(*args, **kwargs)
            else:
                value = await anyio.to_thread.run_sync(
                    functools.partial(task.fn, *args, **kwargs),
                    abandon_on_cancel=True,  # a thread cannot be interrupted; stop waiting
                    limiter=thread_limiter,
                )
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:  # a handler's failure is data, not our crash
        return _failure(exc, started)
    if scope.cancelled_caught:
        return Execution(
            ok=False,
            duration_ms=_ms_since(started),
            error_type="JobTimedOut",
            error=f"handler ran past its timeout of {timeout_s} s",
        )
    try:
        encoded = serializer.dumps(value)
    except (TypeError, ValueError) as exc:
        error = SerializationError(task.name, "(result)", str(exc))
        return Execution(
            ok=False,
            duration_ms=_ms_since(started),
            error_type=type(error).__name__,
            error=str(error),
            retryable=False,
        )
    return Execution(ok=True, duration_ms=_ms_since(started), result=encoded)


def _failure(exc: BaseException, started: float) -> Execution:
    text = "".join(traceback.format_exception(exc))
    if len(text) > _MAX_TRACEBACK_CHARS:
        text = "…" + text[-_MAX_TRACEBACK_CHARS:]
    return Execution(
        ok=False,
        duration_ms=_ms_since(started),
        error_type=type(exc).__qualname__,
        error=str(exc)[:4000],
        traceback=text,
        exception=exc,
    )


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
