"""An App whose ``deaf.sleep`` task makes its worker process ignore SIGTERM and SIGINT.

For ``tests/test_supervisor.py``: a child that no signal stops (not even its
own watchdog, which a signal arms), so only the supervisor's SIGKILL at the
end of the grace period ends it. Queue from ``$STREAMQ_TEST_QUEUE``.
"""

from __future__ import annotations

import os
import signal

import anyio

from streamq import App

SLEEP = "deaf.sleep"


def register(app: App) -> App:
    @app.task(name=SLEEP)
    async def sleep(seconds: float) -> float:
        # Async handlers run in the event loop's thread, the main one: this
        # replaces the worker's own signal handlers.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        await anyio.sleep(seconds)
        return seconds

    return app


app = register(App(os.environ.get("STREAMQ_TEST_QUEUE", "deaf")))
