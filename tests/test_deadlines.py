"""The worker's deadline watcher: handler timeouts without an event-loop timer per job."""

from __future__ import annotations

import time

import anyio
import pytest

from streamq.worker.deadlines import Deadlines

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
