"""The janitor: singleton duties that keep a queue healthy.

Runs inside every worker by default and alone as ``streamq janitor``; a
leader lease makes one janitor per queue do the work at a time:

- promote due jobs from the delayed set (scheduled jobs and retries waiting
  for their backoff) into their priority streams, every ``janitor_interval_s``
  and, between passes, when the earliest of them is due;
- settle chained jobs (``streamq.chains``) whose parents are final, every
  pass, in bounded steps: queued when every parent succeeded, to the DLQ
  naming the parent otherwise;
- enqueue the due ticks of cron and periodic schedules (``streamq.cron``),
  every ``janitor_interval_s``;
- remove consumers idle for ``consumer_idle_s`` with nothing pending (a fresh
  consumer name per process would otherwise leave dead ones behind);
- trim history older than ``retention_s`` (or beyond ``retention_maxlen``)
  from the priority streams, never past a pending or unread entry, and events
  older than ``retention_s`` (or beyond ``events_maxlen``, when set) from the
  events stream, never its last ``EVENTS_KEEP_S`` seconds; every
  ``trim_interval_s`` (``scripts/trim.lua``). No script caps the events
  stream as it writes: its history is kept by time, like the streams';
- bound lost jobs, on the same cadence: a job hash that is not final has no
  TTL (its message brings it to an outcome, which sets one); if the message
  is gone (deleted or trimmed by hand, a delayed entry removed), the hash
  would stay forever. The janitor SCANs the job hashes in bounded batches
  (its cursor carries over between passes) and ``scripts/lost.lua`` marks
  each one whose message is provably gone, and whose last change is older
  than ``lost_job_age_s``, as ``dead`` (``MessageLost``) with a TTL and an
  event, in one step. A live job is never marked: the check is exact, the
  age only a margin;
- drop cancel requests older than a day on the same cadence
  (``streamq.cancel.drop_stale_requests``): a job that ended before its
  worker saw the request leaves it behind.

- expire unique keys (``streamq.unique``) whose job is final, on the same
  cadence and in the same bounded SCAN steps: a key has no TTL while its job
  lives, and gets the rest of its ``key_ttl`` once the job is over.

Reclaiming stuck messages is not here: a reclaimed message must be run, so
each worker reclaims for itself (``worker.fetch``).
"""

from __future__ import annotations

import time
from typing import cast

import anyio
from redis.exceptions import RedisError

from streamq import chains, cron, unique
from streamq.app import App
from streamq.archive import Archive, archive_before_trim
from streamq.archive.format import id_key as _id_key
from streamq.cancel import drop_stale_requests
from streamq.keys import GROUP
from streamq.lease import Lease
from streamq.logging import get_logger
from streamq.promotion import promote_due

LOST_SCAN_COUNT = 1000
"""SCAN's COUNT hint, and about how many job hashes one pass examines."""
LOST_BATCH = 100
"""Job hashes per ``lost`` script call."""
PROMOTE_GAP_S = 0.02
"""The shortest sleep between two promotions: due times close together share a
wake, so a spread of them costs at most 50 promotions a second."""
EVENTS_KEEP_S = 10.0
ARCHIVE_STEP = 20_000
"""Entries archived per stream per trim pass at most (about 0.25 s of export):
a pass stays well inside its lease, and a backlog is caught up over passes."""
"""The newest events a trim never removes, whatever ``retention_s`` or
``events_maxlen`` say. The events stream has no consumer group to bound a trim;
its readers are ``job.result()`` waiters, whose shared reader starts at the last
event id a waiter saw when it read its job hash and then trails the stream's end
by at most one blocking read (``waiters.BLOCK_SLICE_S``) and a round trip. An
event trimmed before it was read still reaches its waiter through the reader's
re-check of the job hash (``waiters.RECHECK_S``), only later: this margin keeps
that from happening at ``retention_s=0`` or a small ``events_maxlen``."""


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
        self.lost = 0
        self._lost_cursor = 0
        self._unique_cursor = 0
        self._chain_offset = 0
        self._archive_handle: Archive | None = None
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
        next_pass = 0.0
        try:
            while True:
                wait_s = self.interval_s
                try:
                    if await lease.acquire_or_renew():
                        if time.monotonic() >= next_pass:
                            next_pass = time.monotonic() + self.interval_s
                            await self.run_once()
                        else:
                            await self.promote_due()
                        wait_s = await self._until_next_wake(next_pass)
                except RedisError as exc:
                    self._log.warning("janitor pass failed; retrying", error=str(exc))
                await anyio.sleep(wait_s)
        finally:
            await lease.release()

    async def _until_next_wake(self, next_pass: float) -> float:
        """Seconds to sleep: until the next full pass, or sooner, when the earliest
        delayed job is due before it (then only promotion runs), at most
        ``PROMOTE_GAP_S`` apart. A job already in the delayed set at a pass so
        starts on time, not up to an interval late; one added later with a
        shorter wait is seen at the next wake."""
        wait_s = max(0.0, next_pass - time.monotonic())
        app = self.app
        due_ms = await (await app.scripts()).promote_next_ms(
            delayed=app.keys.delayed, events=app.keys.events, dlq=app.keys.dlq,
            streams=app.streams, priorities=app.settings.priorities, group=GROUP,
        )  # fmt: skip
        if due_ms is not None:
            wait_s = min(wait_s, max(PROMOTE_GAP_S, due_ms / 1000))
        return wait_s

    async def run_once(self) -> None:
        """One pass of every duty (the caller holds the lease)."""
        await self.promote_due()
        await cron.run_due(self.app, self._log)
        await self.release_children()
        now = time.monotonic()
        if now - self._last_cleanup >= min(60.0, self.app.settings.consumer_idle_s):
            self._last_cleanup = now
            await self.remove_idle_consumers()
        if now - self._last_trim >= self.app.settings.trim_interval_s:
            self._last_trim = now
            await self.trim()
            await self.bound_lost_jobs()
            await self.sweep_unique_keys()
            await drop_stale_requests(self.app)  # cancel requests nobody took up (a day old)

    async def promote_due(self) -> int:
        """Move every due delayed job into its stream; returns how many."""
        total, dead = await promote_due(self.app)
        if total:
            self.promoted += total
            self._log.info("promoted due jobs", count=total)
        if dead:
            self._log.error("delayed entries that cannot run moved to the DLQ", count=dead)
        return total

    async def trim(self) -> int:
        """Apply the retention limits to every priority stream and the events stream.

        With an archive (``settings.archive``), each stream's history is first
        copied there (whole windows, in bounded steps), and the trim never goes
        past what the archive holds; the DLQ, which requeue and purge delete
        from, is copied on every pass too.
        """
        app = self.app
        settings = app.settings
        streams_limited = settings.retention_s is not None or settings.retention_maxlen is not None
        events_limited = settings.retention_s is not None or settings.events_maxlen is not None
        if not (streams_limited or events_limited):
            return 0
        scripts = await app.scripts()
        redis = await app.node_redis()
        # Ages are judged by the server's clock (stream ids carry its time).
        seconds, micros = await redis.time()
        now_ms = seconds * 1000 + micros // 1000
        min_id = "0"
        if settings.retention_s is not None:
            min_id = f"{max(0, now_ms - int(settings.retention_s * 1000))}-0"
        total = 0
        if streams_limited:
            for stream in app.streams:
                floor = await self._archived_up_to(stream, min_id, settings.retention_maxlen)
                removed, _cut = await scripts.trim(
                    stream, min_id=min_id, maxlen=settings.retention_maxlen or 0, floor=floor or ""
                )
                total += removed
        if events_limited:
            floor = f"{max(0, now_ms - int(EVENTS_KEEP_S * 1000))}-0"
            archived = await self._archived_up_to(app.keys.events, min_id, settings.events_maxlen)
            if archived is not None and _id_key(archived) < _id_key(floor):
                floor = archived
            removed, _cut = await scripts.trim(
                app.keys.events, min_id=min_id, maxlen=settings.events_maxlen or 0, floor=floor
            )
            total += removed
        archive = self._archive()
        if archive is not None:
            await archive.export(redis, app.keys.dlq, whole_windows=True, max_entries=ARCHIVE_STEP)
        if total:
            self.trimmed += total
            self._log.info("trimmed history", entries=total)
        return total

    async def _archived_up_to(self, stream: str, min_id: str, maxlen: int | None) -> str | None:
        """With an archive: copy what a trim would remove; the id the trim must stay below."""
        archive = self._archive()
        if archive is None:
            return None
        # A count cap may cut above the age cutoff: then archive every closed window.
        cut = min_id if self.app.settings.retention_s is not None and not maxlen else None
        return await archive_before_trim(
            archive, await self.app.node_redis(), stream, cut, max_entries=ARCHIVE_STEP
        )

    def _archive(self) -> Archive | None:
        location = self.app.settings.archive
        if location is None:
            return None
        if self._archive_handle is None:
            self._archive_handle = Archive(location, window_s=self.app.settings.archive_window_s)
        return self._archive_handle

    async def bound_lost_jobs(self) -> list[str]:
        """One bounded step of the scan for lost jobs; returns the job ids marked.

        Examines about LOST_SCAN_COUNT job hashes (SCAN, continuing from where
        the last pass stopped, so the whole keyspace is covered over passes).
        """
        app = self.app
        redis = await app.node_redis()  # SCAN: on the node holding the queue
        scripts = await app.scripts()
        base = app.keys.job("").encode()
        cursor, keys = await redis.scan(
            self._lost_cursor, match=app.keys.job_pattern(), count=LOST_SCAN_COUNT
        )
        self._lost_cursor = int(cursor)
        jobs = [(key[len(base) :], key) for key in cast(list[bytes], keys)]
        marked: list[str] = []
        for i in range(0, len(jobs), LOST_BATCH):
            found = await scripts.lost(
                events=app.keys.events, delayed=app.keys.delayed, streams=app.streams,
                group=GROUP,
                result_ttl_ms=int(app.settings.result_ttl_s * 1000),
                safe_age_ms=int(app.settings.lost_job_age_s * 1000),
                jobs=jobs[i : i + LOST_BATCH],
            )  # fmt: skip
            marked += [job_id.decode(errors="replace") for job_id in found]
        if marked:
            self.lost += len(marked)
            self._log.error(
                "jobs whose message is gone marked dead (MessageLost)", jobs=marked[:20],
                count=len(marked),
            )  # fmt: skip
        return marked

    async def release_children(self) -> int:
        """One bounded step of settling chained jobs whose parents are final
        (``streamq.chains``); returns how many were queued or dead-lettered."""
        self._chain_offset, settled = await chains.release_children(self.app, self._chain_offset)
        if settled:
            self._log.info("released chained jobs", count=settled)
        return settled

    async def sweep_unique_keys(self) -> int:
        """One bounded step of the unique-key sweep (``streamq.unique``): keys whose
        job is final get the TTL they have left. Returns how many were released."""
        app = self.app
        self._unique_cursor, released = await unique.sweep(
            await app.node_redis(), await app.scripts(), app.keys, self._unique_cursor
        )
        return released

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
