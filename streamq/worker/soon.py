"""Jobs this worker puts in the delayed set for a short wait start when due.

The janitor sleeps until the earliest delayed job is due, but it chose that
sleep before this worker's jobs reached the delayed set: a retry due in
300 ms (full-jitter backoff's first delays are under a second), or a job
deferred to its rate slot 200 ms away, would wait for the janitor's next
wake, up to a janitor interval. The outcome writer (retries) and the limiter
(rate deferrals) tell ``SoonDue`` of each wait shorter than that interval,
and ``SoonDue`` promotes the lane's due jobs once it is over
(``streamq.promotion``, safe next to the janitor's). Due times within
``GAP_S`` of each other share one promotion.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

import anyio
from redis.exceptions import RedisError

from streamq.app import App
from streamq.promotion import promote_due

GAP_S = 0.02
"""Due times closer than this share a promotion: at most 50 calls a second."""
SLACK_S = 0.002
"""Past the local due time: the server's due time was set before its reply came."""


class SoonDue:
    def __init__(self, app: App, log: Any) -> None:
        self._app = app
        self._log = log
        self._horizon_ms = app.settings.janitor_interval_s * 1000
        self._due: list[float] = []  # a heap of time.monotonic() deadlines
        self._wake: anyio.Event | None = None

    def note(self, delay_ms: int) -> None:
        """A job this worker put in the delayed set is due in ``delay_ms``."""
        if not 0 < delay_ms < self._horizon_ms:
            return  # due now (already in its stream) or later than the janitor's next wake
        deadline = time.monotonic() + delay_ms / 1000 + SLACK_S
        heapq.heappush(self._due, deadline)
        if self._due[0] == deadline and self._wake is not None:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._due)

    async def run(self) -> None:
        """Promote at each noted due time; runs until cancelled."""
        due = self._due
        while True:
            self._wake = anyio.Event()
            now = time.monotonic()
            if due and due[0] <= now:
                while due and due[0] <= now + GAP_S:
                    heapq.heappop(due)
                try:
                    await promote_due(self._app, rounds=1)
                except RedisError as exc:
                    self._log.warning("due retries not promoted; the janitor will", error=str(exc))
                continue
            with anyio.move_on_after(due[0] - now if due else None):
                await self._wake.wait()
