"""Lifespan: the App's async context manager, entered once per worker before the
first fetch and exited after the last outcome is recorded; what it yields is
every handler's ``current_job().state``."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

import streamq
from streamq import App, JobContext, JobStatus, LifespanError, Middleware, Worker
from streamq.keys import GROUP
from tests.apps.lifespan_app import HOLD, release_key
from tests.apps.lifespan_app import register as register_lifespan_app
from tests.apps.process import streamq_child
from tests.conftest import drop_queue, queue_name, running_worker, subprocess_env, wait_until

pytestmark = pytest.mark.anyio

START_TIMEOUT_S = 20.0  # interpreter start + imports on a loaded 2-core machine


@dataclass
class Pool:
    name: str
    opened: int = 0
    closed: int = 0
    used_by: list[str] = field(default_factory=list)


async def test_lifespan_is_entered_once_and_every_job_sees_its_state(redis_url: str) -> None:
    pool = Pool("db")
    middleware_saw: list[Any] = []

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[Pool]:
        pool.opened += 1
        yield pool
        pool.closed += 1

    class SeeState(Middleware):
        async def before(self, ctx: JobContext) -> None:
            middleware_saw.append(ctx.state)

    app = App(queue_name(), redis_url=redis_url, lifespan=lifespan, middleware=[SeeState()])

    @app.task(name="a")
    async def a() -> str:
        state = streamq.current_job().state_as(Pool)
        state.used_by.append("a")
        return state.name

    @app.task(name="s")
    def s() -> str:
        state = streamq.current_job().state_as(Pool)
        state.used_by.append("s")
        return state.name

    async with app:
        jobs = [await a.enqueue(), await s.enqueue()]
        assert pool.opened == 0, "enqueueing does not enter the lifespan"
        async with running_worker(app):
            assert [await j.result(timeout=10) for j in jobs] == ["db", "db"]
            assert (pool.opened, pool.closed) == (1, 0)
        await drop_queue(app)
    assert (pool.opened, pool.closed) == (1, 1)
    assert sorted(pool.used_by) == ["a", "s"]
    assert middleware_saw == [pool, pool]


async def test_state_as_checks_the_type(app: App) -> None:
    @app.task(name="t")
    async def t() -> str:
        ctx = streamq.current_job()
        assert ctx.state is None, "no lifespan: no state"
        with pytest.raises(TypeError, match="Pool"):
            ctx.state_as(Pool)
        return "ok"

    job = await t.enqueue()
    async with running_worker(app):
        assert await job.result(timeout=10) == "ok"


async def test_a_lifespan_failing_on_startup_stops_the_worker_before_any_fetch(
    redis_url: str,
) -> None:
    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        raise ConnectionRefusedError("database unreachable")
        yield  # pragma: no cover

    app = App(queue_name(), redis_url=redis_url, lifespan=lifespan)

    @app.task(name="t")
    async def t() -> None: ...

    async with app:
        job = await t.enqueue()
        with pytest.raises(LifespanError) as failed:
            await Worker(app, burst=True).run()
        assert isinstance(failed.value.__cause__, ConnectionRefusedError)
        assert "ConnectionRefusedError: database unreachable" in str(failed.value)
        await assert_nothing_fetched(app)
        assert await job.status() == JobStatus.QUEUED
        await drop_queue(app)


async def test_a_lifespan_failing_on_exit_fails_the_run_after_the_outcomes(redis_url: str) -> None:
    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        yield
        raise OSError("pool did not close")

    app = App(queue_name(), redis_url=redis_url, lifespan=lifespan)

    @app.task(name="t")
    async def t() -> str:
        return "done"

    async with app:
        job = await t.enqueue()
        with pytest.raises(LifespanError, match="pool did not close"):
            await Worker(app, burst=True).run()
        assert await job.result(timeout=1) == "done"
        await drop_queue(app)


async def assert_nothing_fetched(app: App) -> None:
    redis = await app.redis()
    (group,) = await redis.xinfo_groups(app.keys.stream("default"))
    assert group["name"] == GROUP.encode()
    assert group["pending"] == 0
    assert group["last-delivered-id"] == b"0-0", "a message was delivered"


async def test_cli_worker_exits_1_with_the_lifespan_error_having_fetched_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    app = register_lifespan_app(App(queue_name(), redis_url=redis_url))
    async with app:
        job = await app.enqueue(HOLD)
        marks = tmp_path / "marks.txt"
        env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name, STREAMQ_TEST_MARKS=str(marks))
        args = ["worker", "tests.apps.lifespan_app:broken", "--json"]
        async with streamq_child(args, env) as child:
            assert await child.wait(START_TIMEOUT_S) == 1, child.output()
        assert marks.read_text() == "entered\n"
        assert child.stderr[-1:] == [
            f"streamq: the lifespan of App({app.name!r}) failed on startup: "
            "RuntimeError: database unreachable"
        ], child.output()
        assert "Traceback" not in "\n".join(child.stderr)
        logged = [r for r in child.records() if r["event"] == "lifespan failed on startup"]
        assert len(logged) == 1 and "database unreachable" in json.dumps(logged[0]["exception"])
        await assert_nothing_fetched(app)
        assert await job.status() == JobStatus.QUEUED
        await drop_queue(app)


async def test_cli_worker_exits_the_lifespan_after_the_last_outcome_on_sigterm(
    redis_url: str, tmp_path: Path
) -> None:
    app = register_lifespan_app(App(queue_name(), redis_url=redis_url))
    marks = tmp_path / "marks.txt"
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name, STREAMQ_TEST_MARKS=str(marks))
    async with app:
        job = await app.enqueue(HOLD)
        args = ["worker", "tests.apps.lifespan_app:app", "--json", "--grace", "30"]
        async with streamq_child(args, env) as child:
            await wait_until(
                lambda: job_is(job, JobStatus.RUNNING), START_TIMEOUT_S, "the job to run"
            )
            assert marks.read_text() == "entered\n"
            child.signal(signal.SIGTERM)
            await child.wait_for_line(
                lambda line: '"signal: finishing in-flight jobs"' in line, 10, "acknowledging"
            )
            await (await app.redis()).rpush(release_key(app), "go")
            assert await child.wait(30) == 0, child.output()
        assert marks.read_text() == f"entered\nexit: {job.id}=succeeded\n"
        assert await job.result(timeout=1) == "db-pool"
        await drop_queue(app)


async def job_is(job: Any, status: JobStatus) -> bool:
    return bool(await job.status() == status)


def test_lifespan_must_be_callable() -> None:
    with pytest.raises(streamq.ConfigError, match="lifespan"):
        App("q", lifespan="not a function")  # type: ignore[arg-type]


async def test_lifespan_started_worker_is_ready_only_after_entering(redis_url: str) -> None:
    """``tg.start(worker.run)`` returns once the lifespan is entered."""
    entered = anyio.Event()

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[str]:
        await anyio.sleep(0.05)
        entered.set()
        yield "state"

    app = App(queue_name(), redis_url=redis_url, lifespan=lifespan)
    async with app, running_worker(app):
        assert entered.is_set()
