"""Middleware: hooks around every job in the worker, and at enqueue in the producer.

Subclass ``Middleware`` and override the hooks you need; the others do nothing
and cost nothing (only the hooks a class overrides are ever called)::

    class Timing(Middleware):
        @asynccontextmanager
        async def around(self, ctx: JobContext) -> AsyncIterator[None]:
            started = time.perf_counter()
            try:
                yield
            finally:
                log.info("job ran", task=ctx.task, ms=1000 * (time.perf_counter() - started))

    app = App("emails", middleware=[Timing(), ErrorReporter()])

Order: the first middleware is the outermost. With ``[A, B]`` a job runs
``A.around`` → ``A.before`` → ``B.around`` → ``B.before`` → handler →
``B.after`` → ``B.around`` exits → ``A.after`` → ``A.around`` exits. When
something inside a layer raises, that layer's ``on_error`` runs instead of
its ``after`` (innermost first), and the exception goes on outward through
its ``around``.

Hooks are async and run in the worker's event loop, for sync handlers too:
``around`` wraps the whole run on the handler thread, ``before`` and
``after`` run on the loop just before and after it (a hook that blocks,
blocks the worker). Context variables set by ``around`` or ``before`` are
seen by the handler, on its thread too.

A hook that raises fails that job as if its handler had raised the same
exception: the failure is recorded, ``retry_on`` and ``max_retries`` apply,
and the worker goes on with other jobs. ``on_error`` may raise another
exception to replace the one it was given.

The task's timeout bounds the handler only, not the hooks. A handler cut off
by its timeout reaches ``on_error`` (and ``around``'s exit) as a
``streamq.JobTimedOut``. A job cut off by the worker's shutdown is not a
failure: ``on_error`` is not called, ``around`` sees the cancellation, and
the job stays pending for another worker even if an ``around`` swallows it.

Producer side: ``on_enqueue`` runs once per job, in the middleware's order,
after the job's arguments are checked and before anything is sent; each one
gets the headers the previous one returned and returns the job's headers. A
hook that raises refuses the whole enqueue call: nothing is written.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import anyio

from streamq.envelope import encode_headers
from streamq.errors import ConfigError, EnqueueError

if TYPE_CHECKING:
    from streamq.progress import JobContext
    from streamq.task import Task

__all__ = ["EnqueueHooks", "JobHooks", "Middleware", "check_middleware"]

_ASYNC_HOOKS = ("before", "after", "on_error", "on_enqueue")


class Middleware:
    """Hooks around every job (worker side) and at enqueue (producer side).

    Every hook is optional: override the ones you need. See the module's
    documentation for the order, threads, errors and timeouts.
    """

    def around(self, ctx: JobContext) -> AbstractAsyncContextManager[object]:
        """An async context manager around the whole run (e.g. a DB transaction)."""
        return nullcontext()

    async def before(self, ctx: JobContext) -> None:
        """Runs before the handler (and before inner middleware)."""

    async def after(self, ctx: JobContext, result: Any) -> None:
        """Runs after the handler returned ``result`` (the value, before it is encoded)."""

    async def on_error(self, ctx: JobContext, exc: BaseException) -> None:
        """Runs when the handler (or an inner hook) raised ``exc``; it is re-raised after."""

    async def on_enqueue(
        self,
        task: Task[Any, Any, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> Mapping[str, str]:
        """Producer side, per job: returns the job's headers (e.g. ``{**headers, "tenant": t}``)."""
        return headers


def _overridden(middleware: Middleware, name: str) -> Callable[..., Any] | None:
    """The bound hook when the middleware's class overrides it, else None."""
    if getattr(type(middleware), name) is getattr(Middleware, name):
        return None
    hook: Callable[..., Any] = getattr(middleware, name)
    return hook


def check_middleware(middleware: Sequence[Middleware]) -> tuple[Middleware, ...]:
    """The App's middleware, checked: Middleware instances whose hooks are async."""
    if not isinstance(middleware, Sequence):
        raise ConfigError(f"middleware must be a list of Middleware, got {middleware!r}")
    for item in middleware:
        if not isinstance(item, Middleware):
            raise ConfigError(f"middleware must be Middleware instances, got {item!r}")
        for name in _ASYNC_HOOKS:
            hook = _overridden(item, name)
            if hook is not None and not inspect.iscoroutinefunction(hook):
                raise ConfigError(
                    f"{type(item).__name__}.{name} must be an async def (hooks are awaited)"
                )
    return tuple(middleware)


Call = Callable[[], Awaitable[Any]]
_Layer = tuple[
    Callable[..., AbstractAsyncContextManager[object]] | None,
    Callable[..., Awaitable[None]] | None,
    Callable[..., Awaitable[None]] | None,
    Callable[..., Awaitable[None]] | None,
]


class JobHooks:
    """The worker side of a middleware list: the overridden hooks, outermost first."""

    __slots__ = ("_layers",)

    def __init__(self, layers: Sequence[_Layer]) -> None:
        self._layers = tuple(layers)

    @classmethod
    def of(cls, middleware: Sequence[Middleware]) -> JobHooks | None:
        """None when no middleware overrides a job hook: the worker then calls none."""
        layers = [
            (
                _overridden(m, "around"),
                _overridden(m, "before"),
                _overridden(m, "after"),
                _overridden(m, "on_error"),
            )
            for m in middleware
        ]
        layers = [layer for layer in layers if any(hook is not None for hook in layer)]
        return cls(layers) if layers else None

    async def run(self, ctx: JobContext, call: Call) -> Any:
        """``call()`` (the handler) inside every layer's hooks; raises what they raise."""
        return await self._layer(0, ctx, call)

    async def _layer(self, i: int, ctx: JobContext, call: Call) -> Any:
        if i == len(self._layers):
            return await call()
        around = self._layers[i][0]
        if around is None:
            return await self._hooks(i, ctx, call)
        async with around(ctx):
            return await self._hooks(i, ctx, call)
        return None  # the around swallowed an exception: the job returns None

    async def _hooks(self, i: int, ctx: JobContext, call: Call) -> Any:
        _, before, after, on_error = self._layers[i]
        if before is not None:
            await before(ctx)
        try:
            result = await self._layer(i + 1, ctx, call)
        except BaseException as exc:
            if on_error is not None and not _shutdown(exc):
                await on_error(ctx, exc)
            raise
        if after is not None:
            await after(ctx, result)
        return result


def _shutdown(exc: BaseException) -> bool:
    """A cancellation of the worker's own scope (shutdown), not a failure of the job."""
    return (
        isinstance(exc, anyio.get_cancelled_exc_class())
        and anyio.current_effective_deadline() <= anyio.current_time()
    )


class EnqueueHooks:
    """The producer side of a middleware list: the ``on_enqueue`` hooks, in order."""

    __slots__ = ("_hooks",)

    def __init__(self, hooks: Sequence[Callable[..., Awaitable[Mapping[str, str]]]]) -> None:
        self._hooks = tuple(hooks)

    @classmethod
    def of(cls, middleware: Sequence[Middleware]) -> EnqueueHooks | None:
        hooks = [h for h in (_overridden(m, "on_enqueue") for m in middleware) if h is not None]
        return cls(hooks) if hooks else None

    async def headers(
        self,
        task: Task[Any, Any, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> str | None:
        """The job's headers as the entry holds them (None: no headers); EnqueueError if
        a hook returned something that is not a mapping of str to str."""
        for hook in self._hooks:
            headers = await hook(task, args, kwargs, dict(headers))
        if isinstance(headers, Mapping) and not headers:
            return None
        try:
            return encode_headers(headers)
        except ValueError as exc:
            raise EnqueueError(f"task {task.name!r}: {exc} (from middleware on_enqueue)") from None
