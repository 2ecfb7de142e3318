"""Middleware: ordered hooks around every job (async and sync handlers alike), and
producer hooks at enqueue. A hook that raises fails that job like its handler would."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest

import streamq
from streamq import (
    App,
    ConfigError,
    JobContext,
    JobFailed,
    JobStatus,
    JobTimedOut,
    Middleware,
    Settings,
    Task,
)
from streamq.keys import GROUP
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio


def name_of(exc: BaseException) -> str:
    """The exception's class name; a timeout is a JobTimedOut (of a private subclass)."""
    return "JobTimedOut" if isinstance(exc, JobTimedOut) else type(exc).__name__


class Recorder(Middleware):
    """Writes every hook call to a shared log, with the thread it ran on."""

    def __init__(self, name: str, log: list[str], threads: set[int] | None = None) -> None:
        self.name = name
        self.log = log
        self.threads = threads if threads is not None else set()

    def note(self, text: str) -> None:
        self.threads.add(threading.get_ident())
        self.log.append(f"{self.name}.{text}")

    @asynccontextmanager
    async def around(self, ctx: JobContext) -> AsyncIterator[None]:
        self.note("enter")
        try:
            yield
        except BaseException as exc:
            self.note(f"exit:{name_of(exc)}")
            raise
        self.note("exit")

    async def before(self, ctx: JobContext) -> None:
        self.note(f"before {ctx.task}#{ctx.attempt}")

    async def after(self, ctx: JobContext, result: Any) -> None:
        self.note(f"after {result!r}")

    async def on_error(self, ctx: JobContext, exc: BaseException) -> None:
        self.note(f"on_error {name_of(exc)}")


def fast_app(redis_url: str, middleware: Sequence[Middleware]) -> App:
    """An App whose janitor promotes due retries every 50 ms."""
    return App(
        queue_name(),
        settings=Settings.from_env(redis_url=redis_url, janitor_interval_s=0.05),
        middleware=middleware,
    )


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_hooks_wrap_the_handler_first_middleware_outermost(redis_url: str, kind: str) -> None:
    log: list[str] = []
    hook_threads: set[int] = set()
    handler_threads: set[int] = set()
    app = App(
        queue_name(),
        redis_url=redis_url,
        middleware=[Recorder("A", log, hook_threads), Recorder("B", log, hook_threads)],
    )

    def body(n: int) -> int:
        handler_threads.add(threading.get_ident())
        log.append("handler")
        return n + 1

    if kind == "async":

        @app.task(name="job")
        async def job_async(n: int) -> int:
            return body(n)

    else:
        app.task(name="job")(body)

    async with app:
        job = await app.enqueue("job", 2)
        async with running_worker(app):
            assert await job.result(timeout=10) == 3
        await drop_queue(app)
    assert log == [
        "A.enter", "A.before job#1", "B.enter", "B.before job#1",
        "handler",
        "B.after 3", "B.exit", "A.after 3", "A.exit",
    ]  # fmt: skip
    assert hook_threads == {threading.get_ident()}, "hooks run in the event loop's thread"
    if kind == "sync":
        assert threading.get_ident() not in handler_threads, "a sync handler runs on a thread"


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_on_error_sees_the_failure_innermost_first(redis_url: str, kind: str) -> None:
    log: list[str] = []
    app = App(
        queue_name(), redis_url=redis_url, middleware=[Recorder("A", log), Recorder("B", log)]
    )

    def body() -> None:
        log.append("handler")
        raise ValueError("bad input")

    if kind == "async":

        @app.task(name="job", max_retries=0)
        async def job_async() -> None:
            body()

    else:
        app.task(name="job", max_retries=0)(body)

    async with app:
        job = await app.enqueue("job")
        async with running_worker(app):
            with pytest.raises(JobFailed) as failed:
                await job.result(timeout=10)
        assert failed.value.error_type == "ValueError"
        await drop_queue(app)
    assert log == [
        "A.enter", "A.before job#1", "B.enter", "B.before job#1",
        "handler",
        "B.on_error ValueError", "B.exit:ValueError", "A.on_error ValueError", "A.exit:ValueError",
    ]  # fmt: skip


class Faulty(Middleware):
    """Raises from one hook on the first attempt of the task named ``victim``."""

    def __init__(self, where: str, error: type[Exception] = ConnectionError) -> None:
        self.where = where
        self.error = error

    def check(self, ctx: JobContext, where: str) -> None:
        if where == self.where and ctx.task == "victim" and ctx.attempt == 1:
            raise self.error(f"{where} hook failed")

    @asynccontextmanager
    async def around(self, ctx: JobContext) -> AsyncIterator[None]:
        self.check(ctx, "around_enter")
        yield
        self.check(ctx, "around_exit")

    async def before(self, ctx: JobContext) -> None:
        self.check(ctx, "before")

    async def after(self, ctx: JobContext, result: Any) -> None:
        self.check(ctx, "after")


HOOKS = ["before", "after", "around_enter", "around_exit"]


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("where", HOOKS)
async def test_a_raising_hook_fails_only_that_job_and_it_is_retried(
    redis_url: str, where: str, kind: str
) -> None:
    app = fast_app(redis_url, [Faulty(where)])
    ran: list[tuple[str, int]] = []

    def victim() -> int:
        ran.append(("victim", streamq.current_job().attempt))
        return streamq.current_job().attempt

    def bystander() -> int:
        ran.append(("bystander", streamq.current_job().attempt))
        return streamq.current_job().attempt

    if kind == "async":

        async def avictim() -> int:
            return victim()

        async def abystander() -> int:
            return bystander()

        app.task(name="victim", max_retries=1, backoff_base=0.01)(avictim)
        app.task(name="bystander")(abystander)
    else:
        app.task(name="victim", max_retries=1, backoff_base=0.01)(victim)
        app.task(name="bystander")(bystander)

    async with app:
        hit = await app.enqueue("victim")
        spared = await app.enqueue("bystander")
        async with running_worker(app):
            assert await hit.result(timeout=10) == 2
            assert await spared.result(timeout=10) == 1
        info = await hit.info()
        assert info["attempts"] == "2"
        redis = await app.redis()
        retried = [e for _, e in await redis.xrange(app.keys.events) if e[b"kind"] == b"retried"]
        assert [(e[b"job"].decode(), e[b"error_type"]) for e in retried] == [
            (hit.id, b"ConnectionError")
        ]
        await drop_queue(app)
    ran_victim = [attempt for name, attempt in ran if name == "victim"]
    # A hook before the handler kept it from running on attempt 1.
    assert ran_victim == ([2] if where in ("before", "around_enter") else [1, 2])


@pytest.mark.parametrize("where", HOOKS)
async def test_a_hook_error_outside_retry_on_fails_the_job_and_the_worker_goes_on(
    app: App, where: str
) -> None:
    app_with = App(app.name, settings=app.settings, middleware=[Faulty(where, PermissionError)])

    @app_with.task(name="victim", retry_on=(ConnectionError,))
    async def victim() -> str:
        return "ran"

    @app_with.task(name="bystander")
    async def bystander() -> str:
        return "ran"

    async with app_with:
        hit = await victim.enqueue()
        async with running_worker(app_with) as worker:
            with pytest.raises(JobFailed) as failed:
                await hit.result(timeout=10)
            assert failed.value.error_type == "PermissionError"
            assert f"{where} hook failed" in failed.value.message
            spared = await bystander.enqueue()
            assert await spared.result(timeout=10) == "ran"
            assert worker.in_flight == 0
        assert (await hit.info())["attempts"] == "1"


async def test_on_error_may_replace_the_error(app: App) -> None:
    class Wrap(Middleware):
        async def on_error(self, ctx: JobContext, exc: BaseException) -> None:
            raise RuntimeError(f"wrapped {type(exc).__name__}") from exc

    app_with = App(app.name, settings=app.settings, middleware=[Wrap()])

    @app_with.task(name="t", max_retries=0)
    async def t() -> None:
        raise ValueError("x")

    async with app_with:
        job = await t.enqueue()
        async with running_worker(app_with):
            with pytest.raises(JobFailed) as failed:
                await job.result(timeout=10)
    assert (failed.value.error_type, failed.value.message) == ("RuntimeError", "wrapped ValueError")


async def test_around_runs_in_the_handlers_context(app: App) -> None:
    """An ``around`` can open a transaction that the handler (even on a thread) uses."""
    import contextvars

    transaction: contextvars.ContextVar[str] = contextvars.ContextVar("tx", default="none")

    class Transaction(Middleware):
        @asynccontextmanager
        async def around(self, ctx: JobContext) -> AsyncIterator[None]:
            token = transaction.set(f"tx-{ctx.job_id}")
            try:
                yield
            finally:
                transaction.reset(token)

    app_with = App(app.name, settings=app.settings, middleware=[Transaction()])

    @app_with.task(name="a")
    async def a() -> str:
        return transaction.get()

    @app_with.task(name="s")
    def s() -> str:
        return transaction.get()

    async with app_with:
        ja, js = await a.enqueue(), await s.enqueue()
        async with running_worker(app_with):
            assert await ja.result(timeout=10) == f"tx-{ja.id}"
            assert await js.result(timeout=10) == f"tx-{js.id}"


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_timeout_reaches_on_error_and_hooks_do_not_count_toward_it(
    app: App, kind: str
) -> None:
    log: list[str] = []

    class SlowBefore(Recorder):
        async def before(self, ctx: JobContext) -> None:
            await super().before(ctx)
            if ctx.task == "quick":
                await anyio.sleep(0.5)  # longer than the task's timeout

    app_with = App(app.name, settings=app.settings, middleware=[SlowBefore("M", log)])

    @app_with.task(name="quick", timeout=0.1)
    async def quick() -> str:
        return "done"

    if kind == "async":

        @app_with.task(name="stuck", timeout=0.1, max_retries=0)
        async def stuck() -> None:
            await anyio.sleep(60)

    else:

        @app_with.task(name="stuck", timeout=0.1, max_retries=0)
        def stuck() -> None:
            ctx = streamq.current_job()
            while not ctx.stop_requested:
                threading.Event().wait(0.01)

    async with app_with:
        fast, slow = await quick.enqueue(), await app_with.enqueue("stuck")
        async with running_worker(app_with):
            assert await fast.result(timeout=10) == "done"
            with pytest.raises(JobTimedOut):
                await slow.result(timeout=10)
    assert "M.on_error JobTimedOut" in log
    assert "M.exit:JobTimedOut" in log


async def test_an_around_that_swallows_errors_cannot_complete_a_job_cut_off_by_shutdown(
    app: App,
) -> None:
    """Invariant 8 with middleware: a job cancelled by the shutdown stays pending."""

    class Swallow(Middleware):
        @asynccontextmanager
        async def around(self, ctx: JobContext) -> AsyncIterator[None]:
            with suppress(BaseException):
                yield

    app_with = App(app.name, settings=app.settings, middleware=[Swallow()])
    started = anyio.Event()

    @app_with.task(name="long")
    async def long() -> None:
        started.set()
        await anyio.sleep(60)

    async with app_with:
        job = await long.enqueue()
        async with running_worker(app_with) as worker:
            await started.wait()
            worker.stop(grace_s=0)
        assert await job.status() == JobStatus.RUNNING
        redis = await app_with.redis()
        pending = await redis.xpending(app_with.keys.stream("default"), GROUP)
        assert pending["pending"] == 1


async def test_on_enqueue_runs_per_job_in_order_and_may_refuse(redis_url: str) -> None:
    calls: list[tuple[str, str, tuple[Any, ...], dict[str, Any], dict[str, str]]] = []

    class Stamp(Middleware):
        def __init__(self, name: str) -> None:
            self.name = name

        async def on_enqueue(
            self,
            task: Task[Any, Any, Any],
            args: Sequence[Any],
            kwargs: Mapping[str, Any],
            headers: Mapping[str, str],
        ) -> Mapping[str, str]:
            calls.append((self.name, task.name, tuple(args), dict(kwargs), dict(headers)))
            if kwargs.get("refuse"):
                raise PermissionError("tenant is over quota")
            return {**headers, "by": f"{headers.get('by', '')}{self.name}"}

    app = App(queue_name(), redis_url=redis_url, middleware=[Stamp("A"), Stamp("B")])

    @app.task(name="t")
    async def t(n: int, refuse: bool = False) -> str:
        return streamq.current_job().headers["by"]

    async with app:
        job = await t.enqueue(1)
        assert calls == [
            ("A", "t", (1,), {}, {}),
            ("B", "t", (1,), {}, {"by": "A"}),
        ]
        with pytest.raises(PermissionError):
            await t.enqueue_many([(2,), {"n": 3, "refuse": True}])
        redis = await app.redis()
        assert await redis.xlen(app.keys.stream("default")) == 1, "a refused batch writes nothing"
        async with running_worker(app):
            assert await job.result(timeout=10) == "AB"
        await drop_queue(app)


def test_middleware_is_checked_when_the_app_is_made() -> None:
    with pytest.raises(ConfigError, match="Middleware"):
        App("q", middleware=[object()])  # type: ignore[list-item]

    class SyncHook(Middleware):
        def before(self, ctx: JobContext) -> None:  # type: ignore[override]
            pass

    with pytest.raises(ConfigError, match="async"):
        App("q", middleware=[SyncHook()])
