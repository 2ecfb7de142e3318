"""Executing one job: call the handler under its timeout (inside the middleware's
hooks, ``streamq.middleware``), capture the result.

Every way a handler can end becomes an ``Execution``; none of them escapes
into the worker (SystemExit, KeyboardInterrupt and a CancelledError raised by
the handler itself are failures of that job, not requests to stop the
worker). Cancellation of the worker's own scope (shutdown past the grace
period) is the one exception that propagates: that job did not finish, so
nothing about it may be recorded.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel

from streamq.envelope import Envelope, PoisonMessage, decode_arguments
from streamq.errors import JobTimedOut, SerializationError
from streamq.serializers import Serializer
from streamq.task import Task
from streamq.typed import conversions
from streamq.worker.threads import HandlerThreads

if TYPE_CHECKING:
    from streamq.middleware import JobHooks
    from streamq.progress import JobContext
    from streamq.worker.deadlines import Deadlines

_MAX_TRACEBACK_CHARS = 16_000
_MAX_MESSAGE_CHARS = 4_000


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


def load_arguments(
    serializer: Serializer, envelope: Envelope, task: Task[Any, Any, Any] | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """The job's arguments, or PoisonMessage: running again could not help.

    With ``task``, the arguments must also fit its handler's signature.
    """
    if envelope.content_type != serializer.content_type:
        raise PoisonMessage(
            f"content type {envelope.content_type!r} is not {serializer.content_type!r}",
            envelope.job_id,
            envelope.task,
        )
    try:
        value = serializer.loads(envelope.payload)
    except (ValueError, RecursionError) as exc:
        # RecursionError: a custom serializer fed a payload nested too deeply.
        raise PoisonMessage(
            f"payload cannot be decoded: {safe_text(describe_message(exc))}",
            envelope.job_id,
            envelope.task,
        ) from None
    try:
        args, kwargs = decode_arguments(value)
    except PoisonMessage as exc:
        raise PoisonMessage(exc.reason, envelope.job_id, envelope.task) from None
    if task is not None:
        try:
            task.check_arguments(args, kwargs)
        except TypeError as exc:
            raise PoisonMessage(
                f"arguments do not fit the handler's signature: {safe_text(str(exc))}",
                envelope.job_id,
                envelope.task,
            ) from None
        typed = conversions(task.fn)
        if typed.arguments:  # datetimes, dataclasses, ...: into the annotated types
            try:
                return typed.convert_arguments(args, kwargs)
            except ValueError as exc:
                raise PoisonMessage(
                    f"arguments do not fit the handler's annotations: {safe_text(str(exc))}",
                    envelope.job_id,
                    envelope.task,
                ) from None
    return args, kwargs


class HandlerTimedOut(JobTimedOut):
    """The handler ran past its timeout: what middleware's ``on_error`` is given."""


class HandlerCancelled(JobTimedOut):
    """The job was cancelled while its async handler ran (``Job.cancel``): what
    middleware's ``on_error`` is given; the worker records ``cancelled``."""


class RunControl(Protocol):
    """A way to stop one run from outside (the worker's cancel watcher).

    ``attach`` is handed the scope that already bounds the handler by its
    timeout, so a cancel costs no second cancel scope per job; ``requested``
    says whether a cancellation of that scope was a cancel, not a timeout.
    """

    requested: bool

    def attach(self, scope: anyio.CancelScope) -> None: ...


async def execute(
    task: Task[Any, Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    serializer: Serializer,
    threads: HandlerThreads,
    timeout_s: float | None,
    max_result_bytes: int | None = None,
    on_overrun: Callable[[], None] | None = None,
    hooks: JobHooks | None = None,
    context: JobContext | None = None,
    control: RunControl | None = None,
    deadlines: Deadlines | None = None,
) -> Execution:
    """Run the handler (inside the middleware's ``hooks``, given the job's ``context``);
    every way it ends is an Execution, except our own cancellation.

    A sync handler cannot be interrupted: past its timeout it keeps its slot
    (``on_overrun`` is called once, e.g. to tell it through its context) until
    it returns, and is then recorded as timed out, so its retry never runs
    beside it and ``concurrency`` stays a true bound on running handlers.
    ``deadlines``: the worker's watcher that enforces ``timeout_s`` (no timer per
    job, ``streamq.worker.deadlines``); without it, a timer of the run's own.
    """
    started = time.perf_counter()
    try:
        if hooks is None:
            value = await _call(
                task, args, kwargs, threads, timeout_s, on_overrun, "", control, deadlines
            )
        else:
            assert context is not None, "middleware hooks need the job's context"
            value = await hooks.run(
                context,
                functools.partial(
                    _call,
                    task,
                    args,
                    kwargs,
                    threads,
                    timeout_s,
                    on_overrun,
                    context.job_id,
                    control,
                    deadlines,
                ),
            )
            # An ``around`` that swallowed our cancellation (shutdown) must not
            # turn a job that was cut off into a recorded one.
            await anyio.lowlevel.checkpoint_if_cancelled()
    except HandlerCancelled as exc:
        return _not_retryable("JobCancelled", exc.message, started)
    except HandlerTimedOut as exc:
        return Execution(
            ok=False, duration_ms=_ms_since(started), error_type="JobTimedOut", error=exc.message
        )
    except anyio.get_cancelled_exc_class() as exc:
        if anyio.current_effective_deadline() <= anyio.current_time():
            raise  # a scope of ours was cancelled (shutdown): nothing may be recorded
        # Raised by the handler itself (it awaited a task it cancelled, or a
        # library leaked one): that job's failure, not a request to stop.
        return _failure(exc, started)
    except BaseException as exc:  # a handler's failure is data, not our crash
        return _failure(exc, started)
    try:
        encoded = serializer.dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        error = SerializationError(task.name, "(result)", safe_text(describe_message(exc)))
        return _not_retryable(type(error).__name__, str(error), started)
    if max_result_bytes is not None and len(encoded) > max_result_bytes:
        return _not_retryable(
            "ResultTooLarge",
            f"task {task.name!r}: the encoded result is {len(encoded)} bytes; "
            f"max_result_bytes is {max_result_bytes}",
            started,
        )
    return Execution(ok=True, duration_ms=_ms_since(started), result=encoded)


async def _call(
    task: Task[Any, Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    threads: HandlerThreads,
    timeout_s: float | None,
    on_overrun: Callable[[], None] | None,
    job_id: str,
    control: RunControl | None = None,
    deadlines: Deadlines | None = None,
) -> Any:
    """The handler's value; raises what it raises, HandlerTimedOut past its timeout,
    or HandlerCancelled when ``control`` cancelled the run."""
    started = time.perf_counter()
    value: Any = None
    watched = deadlines is not None and timeout_s is not None
    # A scope that is cancelled at the timeout (move_on_after, or the worker's
    # deadline watcher), not fail_after: a TimeoutError the handler raises itself
    # (a socket timeout) is its own failure, subject to retry_on, not ours.
    with anyio.move_on_after(None if watched else timeout_s) as scope:
        if control is not None:
            control.attach(scope)
        if watched:
            assert deadlines is not None and timeout_s is not None
            deadlines.watch(scope, timeout_s)
        try:
            if task.is_async:
                value = await task.fn(*args, **kwargs)
            else:
                call = threads.submit(functools.partial(task.fn, *args, **kwargs))
                await call.wait()
        finally:
            if watched:
                assert deadlines is not None
                deadlines.forget(scope)
    if not task.is_async:
        if scope.cancelled_caught:
            if on_overrun is not None:
                on_overrun()
            await call.wait()  # a cancellation (shutdown) abandons the thread
        if call.error is not None:
            raise call.error
        value = call.value
    if scope.cancelled_caught and task.is_async and control is not None and control.requested:
        raise HandlerCancelled(job_id, "JobCancelled", "cancelled on request", "")
    if scope.cancelled_caught:
        overran = "" if task.is_async else f"; it returned after {_ms_since(started)} ms"
        message = f"handler ran past its timeout of {timeout_s} s{overran}"
        raise HandlerTimedOut(job_id, "JobTimedOut", message, "")
    return value


def _not_retryable(error_type: str, error: str, started: float) -> Execution:
    return Execution(
        ok=False,
        duration_ms=_ms_since(started),
        error_type=error_type,
        error=error,
        retryable=False,
    )


def _failure(exc: BaseException, started: float) -> Execution:
    error_type, message, text = describe(exc)
    return Execution(
        ok=False,
        duration_ms=_ms_since(started),
        error_type=error_type,
        error=message,
        traceback=text,
        exception=exc,
    )


def describe(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, traceback) of any exception, as valid UTF-8 text.

    Never raises: an exception's ``__str__`` or ``__repr__`` may raise, its
    text may hold lone surrogates (a file name from ``os.listdir``) that
    Redis's UTF-8 encoding refuses, and its class may have odd attributes.
    """
    cls = type(exc)
    name = getattr(cls, "__qualname__", None)
    if not isinstance(name, str) or not name:
        name = getattr(cls, "__name__", None)
    error_type = safe_text(name if isinstance(name, str) and name else "Exception")[:200]
    message = safe_text(describe_message(exc))[:_MAX_MESSAGE_CHARS]
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # a broken exception object: keep what we have
        text = f"{error_type}: {message}\n(traceback unavailable)"
    text = safe_text(text)
    if len(text) > _MAX_TRACEBACK_CHARS:
        text = "…" + text[-_MAX_TRACEBACK_CHARS:]
    return error_type, message, text


def describe_message(exc: BaseException) -> str:
    """``str(exc)``, else ``repr(exc)``, else a placeholder: never raises."""
    for render in (str, repr):
        try:
            text = render(exc)
        except Exception:
            continue
        if isinstance(text, str):
            return text
    return f"<{type(exc).__name__} object: str() and repr() failed>"


def safe_text(text: str) -> str:
    """``text`` unchanged when it is valid UTF-8, else with lone surrogates escaped."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
