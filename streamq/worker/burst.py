"""When a burst worker may stop: nothing waiting, in flight or stale, nothing due soon.

Pending entries held by other consumers are waited for: they finish, or go
stale and are reclaimed by the worker's next reclaim pass. Delayed jobs due
within ``BURST_HORIZON_S`` (by the server's clock) are waited for too; when
only later schedules remain, the worker says so and stops.
"""

from __future__ import annotations

import time
from typing import Any

from streamq.app import App
from streamq.keys import GROUP

BURST_HORIZON_S = 60.0
"""A burst worker waits for delayed jobs (retries, schedules) due within this many seconds."""
_SAY_EVERY_S = 10.0


class BurstCheck:
    def __init__(self, app: App, log: Any) -> None:
        self._app = app
        self._log = log
        self._said_at = float("-inf")

    async def queue_done(self) -> bool:
        """True when the queue holds nothing this worker should wait for (one round trip)."""
        app = self._app
        redis = await app.node_redis()
        async with redis.pipeline(transaction=False) as pipe:
            for stream in app.streams:
                pipe.xpending(stream, GROUP)
            pipe.time()
            pipe.zcard(app.keys.delayed)
            pipe.zrange(app.keys.delayed, 0, 0, withscores=True)
            *summaries, (seconds, micros), scheduled, first = await pipe.execute()
        pending = sum(int(s["pending"]) for s in summaries)
        if pending:
            now = time.monotonic()
            if now >= self._said_at + _SAY_EVERY_S:
                self._said_at = now
                self._log.info(
                    "burst: waiting for jobs pending at other consumers "
                    "(they finish, or are reclaimed once past their visibility timeout)",
                    pending=pending,
                )
            return False
        if not scheduled:
            return True
        next_due_in_s = (first[0][1] - (seconds * 1000 + micros // 1000)) / 1000
        if next_due_in_s <= BURST_HORIZON_S:
            return False
        self._log.info(
            "burst: only scheduled jobs remain; exiting", scheduled=int(scheduled),
            next_due_in_s=round(next_due_in_s, 1),
        )  # fmt: skip
        return True
