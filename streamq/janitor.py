"""The janitor: singleton duties that keep a queue healthy.

Runs inside every worker by default and alone as ``streamq janitor``; a
leader lease makes one janitor per queue do the work at a time:

- promote due jobs from the delayed set (scheduled jobs and retries waiting
  for their backoff) into their priority streams, every ``janitor_interval_s``;
- remove consumers idle for ``consumer_idle_s`` with nothing pending (a fresh
  consumer name per process would otherwise leave dead ones behind);
- trim history older than ``retention_s`` (or beyond ``retention_maxlen``)
  from the priority streams and the events stream, every ``trim_interval_s``,
  never past a pending or unread entry (``scripts/trim.lua``).

Reclaiming stuck messages is not here: a reclaimed message must be run, so
each worker reclaims for itself (``worker.fetch``).
"""

from __future__ import annotations

import time

import anyio
from redis.exceptions import RedisError

from streamq.app import App
from streamq.keys import GROUP
from streamq.lease import Lease
from streamq.logging import get_logger

PROMOTE_BATCH = 500
PROMOTE_ROUNDS = 100


class Janitor:
    def __init__(self, app: App, owner: str, *, interval_s: float | None = None) -> None:
        self.app = app
        self.owner = owner
        self.interval_s = interval_s or app.settings.janitor_interval_s
        self.promoted = 0
        self.consumers_removed = 0
        self._last_cleanup = 0.0
        self._last_trim = 0.0
        self.trimmed = 0
        self._log = get_logger(queue=app.name, worker=owner, role="janitor")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        scripts = await self.app.scripts()
        # Long enough to survive a slow pass, short enough for a quick failover.
        lease = Lease(
            scripts, self.app.keys.lock("janitor"), max(3 * self.interval_s, 2.0), self.owner
        )
        task_status.started()
        try:
            while True:
                try:
                    if await lease.acquire_or_renew():
                        await self.run_once()
                except RedisError as exc:
                    self._log.warning("janitor pass failed; retrying", error=repr(exc))
                await anyio.sleep(self.interval_s)
        finally:
            await lease.release()

    async def run_once(self) -> None:
        """One pass of every duty (the caller holds the lease)."""
        await self.promote_due()
        now = time.monotonic()
        if now - self._last_cleanup >= min(60.0, self.app.settings.consumer_idle_s):
            self._last_cleanup = now
            await self.remove_idle_consumers()
        if now - self._last_trim >= self.app.settings.trim_interval_s:
            self._last_trim = now
            await self.trim()

    async def promote_due(self) -> int:
        """Move every due delayed job into its stream; returns how many.

        Each round peeks at the due members' job ids, then promotes them with
        their job hashes (a script touches only the keys it is given). A round
        stops early when a member became due after the peek; the next round
        takes it. Bounded, so a flood of new due members cannot hold a pass.
        """
        app = self.app
        scripts = await app.scripts()
        settings = app.settings
        ttl_ms = int(settings.result_ttl_s * 1000)
        key_base = app.keys.job("").encode()
        total = dead = 0
        for _ in range(PROMOTE_ROUNDS):
            ids = await scripts.promote_peek(
                delayed=app.keys.delayed, events=app.keys.events, dlq=app.keys.dlq,
                streams=app.streams, priorities=settings.priorities,
                limit=PROMOTE_BATCH, group=GROUP,
                events_maxlen=settings.events_maxlen, result_ttl_ms=ttl_ms,
            )  # fmt: skip
            if not ids:
                break
            # Ids as bytes: one that is not UTF-8 still names its own hash.
            jobs = [(job_id, key_base + job_id) for job_id in dict.fromkeys(ids) if job_id]
            moved, died, stopped = await scripts.promote(
                delayed=app.keys.delayed, events=app.keys.events, dlq=app.keys.dlq,
                streams=app.streams, priorities=settings.priorities,
                limit=PROMOTE_BATCH, group=GROUP,
                events_maxlen=settings.events_maxlen, result_ttl_ms=ttl_ms, jobs=jobs,
            )  # fmt: skip
            total += moved
            dead += died
            if not stopped and len(ids) < PROMOTE_BATCH:
                break
        if total:
            self.promoted += total
            self._log.info("promoted due jobs", count=total)
        if dead:
            self._log.error("delayed entries that cannot run moved to the DLQ", count=dead)
        return total

    async def trim(self) -> int:
        """Apply the retention limits to every priority stream and the events stream."""
        app = self.app
        settings = app.settings
        if settings.retention_s is None and settings.retention_maxlen is None:
            return 0
        scripts = await app.scripts()
        min_id = "0"
        if settings.retention_s is not None:
            # Ages are judged by the server's clock (stream ids carry its time).
            seconds, micros = await (await app.redis()).time()
            now_ms = seconds * 1000 + micros // 1000
            min_id = f"{max(0, now_ms - int(settings.retention_s * 1000))}-0"
        total = 0
        streams = [*app.streams, app.keys.events]
        for stream in streams:
            removed, _cut = await scripts.trim(
                stream, min_id=min_id, maxlen=settings.retention_maxlen or 0
            )
            total += removed
        if total:
            self.trimmed += total
            self._log.info("trimmed history", entries=total)
        return total

    async def remove_idle_consumers(self) -> list[str]:
        app = self.app
        scripts = await app.scripts()
        removed: list[str] = []
        for priority in app.settings.priorities:
            names = await scripts.prune_consumers(
                app.keys.stream(priority),
                GROUP,
                int(app.settings.consumer_idle_s * 1000),
                self.owner,
            )
            removed += [n.decode(errors="replace") for n in names]
        if removed:
            self.consumers_removed += len(removed)
            self._log.info("removed idle consumers", consumers=removed)
        return removed
