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
                pipe.xinfo_groups(stream)
            pipe.time()
            pipe.zcard(app.keys.delayed)
            pipe.zrange(app.keys.delayed, 0, 0, withscores=True)
            *infos, (seconds, micros), scheduled, first = await pipe.execute()
        groups = [next((g for g in info if _text(g["name"]) == GROUP), None) for info in infos]
        # Unread entries count too: a retry the janitor promoted after this worker's
        # last (empty) fetch is neither pending nor delayed any more.
        if await self._unread(redis, groups):
            return False
        pending = sum(int(g["pending"]) for g in groups if g is not None)
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

    async def _unread(self, redis: Any, groups: list[dict[str, Any] | None]) -> bool:
        """Whether any stream holds an entry its group has not delivered yet.

        The group's ``lag`` says so; when Redis cannot tell (None: entries were
        deleted inside the unread range), one XRANGE after the last delivered id does.
        """
        for stream, group in zip(self._app.streams, groups, strict=True):
            if group is None:
                continue
            lag = group.get("lag")
            if lag is None:
                after = f"({_text(group['last-delivered-id'])}"
                if await redis.xrange(stream, after, "+", count=1):
                    return True
            elif int(lag) > 0:
                return True
        return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
