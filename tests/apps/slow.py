"""An App for worker subprocesses: slow, quick and failing tasks.

``streamq worker tests.apps.slow:app`` imports this module in a child process.
The App takes its URL from ``$STREAMQ_REDIS_URL`` (no ``redis_url`` argument,
as a user's module would) and its queue name from ``$STREAMQ_TEST_QUEUE``, so
every test drives its own queue. A test enqueues from its own App on the same
queue after ``register(app)``: the task names below are the contract between
the two processes.
"""

from __future__ import annotations

import os

import anyio

from streamq import App

SLEEP = "slow.sleep"
ADD = "slow.add"
FAIL = "slow.fail"


def register(app: App) -> App:
    """Register this module's tasks on ``app`` (the worker's App or a test's producer)."""

    @app.task(name=SLEEP)
    async def sleep(seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    @app.task(name=ADD)
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name=FAIL, max_retries=1, backoff_base=0.05)
    async def fail(message: str) -> None:
        raise ValueError(message)

    return app


app = register(App(os.environ.get("STREAMQ_TEST_QUEUE", "slow")))
