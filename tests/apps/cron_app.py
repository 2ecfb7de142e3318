"""An App with a per-second periodic task, for worker subprocesses racing on its ticks.

Queue name from ``$STREAMQ_TEST_QUEUE`` and URL from ``$STREAMQ_REDIS_URL``
(as ``tests.apps.slow``); a short janitor interval so ticks are seen quickly.
"""

from __future__ import annotations

import os
from datetime import timedelta

from streamq import App
from streamq.settings import Settings

TICK = "cron_app.tick"


def register(app: App) -> App:
    @app.periodic(every=timedelta(seconds=1), name=TICK)
    async def tick() -> str:
        return "ticked"

    return app


app = register(
    App(
        os.environ.get("STREAMQ_TEST_QUEUE", "cron-app"),
        settings=Settings.from_env(janitor_interval_s=0.1),
    )
)
