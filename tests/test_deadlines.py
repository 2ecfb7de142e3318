"""The worker's deadline watcher: handler timeouts without an event-loop timer per job."""

from __future__ import annotations

import time

import anyio
import pytest

from streamq import App, Settings, current_job
from streamq.worker.deadlines import Deadlines
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio


async def test_a_scope_is_cancelled_at_its_deadline_and_a_forgotten_one_never() -> None:
    """The watched scope is cancelled once its timeout passed (not before), so
    ``cancelled_caught`` tells a timeout; a run that ended (``forget``) is left alone."""
    deadlines = Deadlines()
    async with anyio.create_task_group() as tg:
        tg.start_soon(deadlines.run)
        finished = anyio.CancelScope()  # a run that ended before its deadline
        deadlines.watch(finished, 0.05)
        deadlines.forget(finished)
        started = time.monotonic()
        with anyio.CancelScope() as timed:
            deadlines.watch(timed, 0.1)
            await anyio.sleep(5)
        assert timed.cancelled_caught
        assert 0.1 <= time.monotonic() - started < 2
        assert not finished.cancel_called and len(deadlines) == 0
        tg.cancel_scope.cancel()


async def test_a_nearer_deadline_wakes_the_watcher_sleeping_towards_a_later_one() -> None:
    """With a run due in an hour watched, a run that starts with a 0.1 s timeout must
    still be cancelled after about 0.1 s (the watcher is woken to sleep less)."""
    deadlines = Deadlines()
    async with anyio.create_task_group() as tg:
        tg.start_soon(deadlines.run)
        with anyio.CancelScope() as long_run:
            deadlines.watch(long_run, 3600)
            await anyio.wait_all_tasks_blocked()  # the watcher sleeps towards the hour
            started = time.monotonic()
            with anyio.CancelScope() as short_run:
                deadlines.watch(short_run, 0.1)
                await anyio.sleep(5)
            assert short_run.cancelled_caught
            assert time.monotonic() - started < 2
            assert not long_run.cancel_called
            deadlines.forget(long_run)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_handler_knows_how_long_its_timeout_leaves_it(redis_url: str, kind: str) -> None:
    """``current_job().time_left()`` replaces ``anyio.current_effective_deadline()``,
    which does not show the worker's own timeout scope: a handler can pass the
    time its timeout leaves on to the calls it makes. None without a timeout."""
    seen: dict[str, tuple[float | None, float | None]] = {}
    app = App(queue_name(), redis_url=redis_url, settings=Settings(task_timeout_s=None))

    def look(name: str) -> None:
        job = current_job()
        seen[name] = (job.deadline, job.time_left())

    if kind == "async":

        @app.task(name="timed", timeout=30)
        async def timed() -> None:
            look("timed")

        @app.task(name="untimed")
        async def untimed() -> None:
            look("untimed")

    else:

        @app.task(name="timed", timeout=30)
        def timed() -> None:
            look("timed")

        @app.task(name="untimed")
        def untimed() -> None:
            look("untimed")

    async with app, running_worker(app):
        await (await timed.enqueue()).result(timeout=10)
        await (await untimed.enqueue()).result(timeout=10)
        await drop_queue(app)
    deadline, left = seen["timed"]
    assert deadline is not None and left is not None and 0 < left <= 30
    assert seen["untimed"] == (None, None)
