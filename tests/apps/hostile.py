"""An App for worker subprocesses whose handlers resist being stopped.

``streamq worker tests.apps.hostile:app`` in a child process, queue from
``$STREAMQ_TEST_QUEUE`` like ``tests.apps.slow``. A test enqueues by name
from its own App after ``register(app)``.
"""

from __future__ import annotations

import os
import time

import anyio

from streamq import App

SYNC_SLEEP = "hostile.sync_sleep"
SHIELDED = "hostile.shielded"
SYNC_OVERRUN = "hostile.sync_overrun"


def register(app: App) -> App:
    @app.task(name=SYNC_SLEEP)
    def sync_sleep(seconds: float) -> float:
        time.sleep(seconds)  # a thread cannot be interrupted
        return seconds

    @app.task(name=SHIELDED)
    async def shielded(seconds: float) -> float:
        with anyio.CancelScope(shield=True):  # ignores the worker's cancellation
            await anyio.sleep(seconds)
        return seconds

    @app.task(name=SYNC_OVERRUN, timeout=0.2, max_retries=0)
    def sync_overrun(seconds: float) -> float:
        time.sleep(seconds)  # runs past its timeout and ignores stop_requested
        return seconds

    return app


app = register(App(os.environ.get("STREAMQ_TEST_QUEUE", "hostile")))
