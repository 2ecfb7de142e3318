"""``streamq janitor`` alone: promotes due jobs while no worker runs a janitor."""

from __future__ import annotations

import signal

import pytest

from streamq import App, JobStatus
from tests.apps.process import streamq_child
from tests.apps.slow import ADD, register
from tests.conftest import queue_name, running_worker, subprocess_env, wait_until

pytestmark = pytest.mark.anyio


async def test_janitor_command_promotes_scheduled_jobs_and_stops_on_sigterm(
    redis_url: str,
) -> None:
    name = queue_name()
    app = register(App(name, redis_url=redis_url))
    async with app:
        job = await app.tasks[ADD].enqueue_in(0.2, 2, 3)
        assert await job.status() == JobStatus.SCHEDULED
        redis = await app.redis()
        stream = app.keys.stream("default")
        env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=name)
        async with streamq_child(
            ["janitor", "tests.apps.slow:app", "--interval", "0.05"], env=env
        ) as child:

            async def promoted() -> bool:
                return int(await redis.xlen(stream)) == 1

            await wait_until(promoted, timeout=20, description="the janitor to promote the job")
            child.signal(signal.SIGTERM)
            assert await child.wait(timeout_s=20) == 0
        async with running_worker(app, janitor=False):
            assert await job.result(timeout=10) == 5
