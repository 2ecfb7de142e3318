"""Job: a handle on one enqueued job, found again by its id from any process."""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from streamq.cancel import CancelResult, cancel_jobs
from streamq.delayed import RunNowResult, run_now
from streamq.errors import JobCancelled, JobFailed, JobNotFound, JobTimedOut
from streamq.typed import conversions, convert

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamq.app import App
    from streamq.details import JobDetails
    from streamq.waiters import Watch

R = TypeVar("R")

EVENT_FIELD_PREFIX = b"ev:"
"""The job hash indexes each event written for the job as a field
``ev:<entry id>`` (value: the event's kind), in the script that writes it:
one job's story is those entries (``Job.event_ids``), not a scan of the
events stream. ``Job.info`` leaves these fields out."""
_OUTCOME_FIELDS = (b"status", b"result", b"error_type", b"error", b"traceback")
_WATCH_FIELDS = (b"status", b"progress", b"progress_msg", b"progress_ms")


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class JobProgress:
    percent: float
    message: str
    at_ms: int


class JobStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    """Waiting in the delayed set for its due time (``enqueue_in`` / ``enqueue_at``)."""
    QUEUED = "queued"
    """In its priority stream, not yet handed to a worker."""
    RUNNING = "running"
    """A worker fetched it and runs the handler."""
    DEFERRED = "deferred"
    """Waiting for its parent jobs to succeed (``with_options(after=[...])``)."""
    RETRYING = "retrying"
    """The handler failed; the job waits for its next attempt (in the delayed set
    until its backoff is over, then in its stream)."""
    SUCCEEDED = "succeeded"
    """Final: the result is stored."""
    FAILED = "failed"
    """Final: the handler failed and no retry is left."""
    DEAD = "dead"
    """Final: moved to the DLQ (a message that could not run)."""
    CANCELLED = "cancelled"
    """Final: cancelled on request (``Job.cancel``) before it ran, or stopped while it ran."""

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """One step of ``Job.watch()``: the job's status and its last progress report."""

    status: JobStatus
    progress: JobProgress | None

    @property
    def final(self) -> bool:
        return self.status.final


class Job(Generic[R]):
    """A job by id. Cheap to create; every method asks Redis."""

    __slots__ = ("_app", "id", "task")

    def __init__(self, app: App, job_id: str, task: str | None = None) -> None:
        self._app = app
        self.id = job_id
        self.task = task

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, task={self.task!r})"

    @property
    def partition(self) -> int:
        """The queue partition holding the job (``streamq.partitions``); 0 on a plain
        queue. A handle from ``app.job(id)`` knows it once it was first used."""
        return self._app.partition_index

    async def info(self) -> dict[str, str]:
        """The job hash, decoded to text (the result stays encoded). Empty if unknown.

        Without the event index (the ``ev:*`` fields): see ``event_ids``.
        """
        redis = await self._app.redis()
        raw = cast(dict[bytes, bytes], await redis.hgetall(self._app.keys.job(self.id)))
        return {
            k.decode(): v.decode(errors="replace")
            for k, v in raw.items()
            if not k.startswith(EVENT_FIELD_PREFIX)
        }

    async def event_ids(self) -> list[tuple[str, str]]:
        """The events recorded for this job while its hash lives, as (entry id in the
        events stream, kind), oldest first. Empty if the job is unknown.

        Every script that writes an event for a job indexes it in the job hash,
        so this is the job's whole story in time proportional to the job; an
        entry the events stream's retention already trimmed is listed all the
        same (reading it finds nothing).
        """
        redis = await self._app.redis()
        raw = cast(dict[bytes, bytes], await redis.hgetall(self._app.keys.job(self.id)))
        found = [
            (k[len(EVENT_FIELD_PREFIX) :].decode(), v.decode(errors="replace"))
            for k, v in raw.items()
            if k.startswith(EVENT_FIELD_PREFIX)
        ]
        return sorted(found, key=lambda item: _entry_order(item[0]))

    async def progress(self) -> JobProgress | None:
        """The last progress the handler reported, or None if it reported none."""
        redis = await self._app.redis()
        raw = cast(
            list[bytes | None],
            await redis.hmget(
                self._app.keys.job(self.id), ["progress", "progress_msg", "progress_ms"]
            ),
        )
        if raw[0] is None:
            return None
        return JobProgress(float(raw[0]), (raw[1] or b"").decode(), int(raw[2] or 0))

    async def status(self) -> JobStatus:
        """Raises JobNotFound when no job hash exists for this id."""
        redis = await self._app.redis()
        raw = cast(bytes | None, await redis.hget(self._app.keys.job(self.id), "status"))
        if raw is None:
            raise JobNotFound(self.id)
        return JobStatus(raw.decode())

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return its result.

        Waits on the events stream, not by polling the job hash: every waiter
        of the App shares one reader (``streamq.waiters``), so thousands of
        waiters hold no pooled connection while they wait.

        Raises:
            JobFailed: the handler failed for good (JobTimedOut for a timeout),
                or the job was moved to the DLQ.
            TimeoutError: not finished within ``timeout`` seconds.
            JobNotFound: no such job (never enqueued, or its result expired).
        """
        app = self._app
        keys = app.keys
        deadline = None if timeout is None else time.monotonic() + timeout
        # Register first, then read: an event the shared reader reads after this
        # point wakes us, and one written before the read below shows in the hash.
        async with app.result_waiters.watch(self.id) as watch:
            redis = await app.node_redis()
            # Only the fields an outcome needs (HMGET): not the event index.
            fields = _present(await self._read_following(redis, watch, _OUTCOME_FIELDS))
            while True:
                if not fields:
                    raise JobNotFound(self.id)
                if fields.get(b"status", b"").decode() in _FINAL:
                    return self._outcome(fields)
                if not await watch.wait(deadline):
                    raise TimeoutError(f"job {self.id} not finished within {timeout} s")
                # Woken by a final event for us, or by the reader's periodic
                # re-check (events can be trimmed before anyone reads them).
                fields = _present(
                    cast(list[bytes | None], await redis.hmget(keys.job(self.id), _OUTCOME_FIELDS))
                )

    async def _read_following(
        self, redis: Redis, watch: Watch, fields: tuple[bytes, ...]
    ) -> list[bytes | None]:
        """The job hash's ``fields`` and, in the same MULTI, the last event id, from
        which the registered ``watch`` is followed: the reader starts no later than
        this id, so no event for this job slips between the read and the wait."""
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xrevrange(self._app.keys.events, "+", "-", count=1)
            pipe.hmget(self._app.keys.job(self.id), fields)
            last, values = cast(
                tuple[list[tuple[bytes, Any]], list[bytes | None]], await pipe.execute()
            )
        watch.follow_from(last[0][0] if last else b"0-0")
        return values

    def _outcome(self, fields: dict[bytes, bytes]) -> R:
        status = fields[b"status"].decode()
        if status == JobStatus.SUCCEEDED:
            value: R = self._app.serializer.loads(fields.get(b"result", b"null"))
            task = self._app.tasks.get(self.task) if self.task else None
            if task is not None and (returns := conversions(task.fn).result) is not None:
                try:
                    converted: R = convert(value, returns)
                except ValueError as exc:
                    raise ValueError(
                        f"the result of job {self.id} does not convert to {returns!r}: {exc}"
                    ) from None
                return converted
            return value
        if status == JobStatus.CANCELLED:
            raise JobCancelled(self.id)
        error_type = fields.get(b"error_type", b"").decode(errors="replace")
        message = fields.get(b"error", b"").decode(errors="replace")
        tb = fields.get(b"traceback", b"").decode(errors="replace")
        cls = JobTimedOut if error_type == "JobTimedOut" else JobFailed
        raise cls(self.id, error_type, message, tb)

    async def watch(self, timeout: float | None = None) -> AsyncIterator[JobUpdate]:
        """The job's status and progress as they change, until it is final.

        Yields the current state first, then one update per change, and
        returns after the final status (the result: ``result()``). Woken by the
        job's own events through the App's shared events reader, not by
        polling, so a web page can stream it (Server-Sent Events) for free.

        Raises:
            TimeoutError: not final within ``timeout`` seconds.
            JobNotFound: no such job.
        """
        app = self._app
        keys = app.keys
        deadline = None if timeout is None else time.monotonic() + timeout
        async with app.result_waiters.watch(self.id, every_event=True) as watch:
            redis = await app.node_redis()
            values = await self._read_following(redis, watch, _WATCH_FIELDS)
            shown: JobUpdate | None = None
            while True:
                if values[0] is None:
                    raise JobNotFound(self.id)
                update = _update(values)
                if update != shown:
                    shown = update
                    yield update
                if update.final:
                    return
                if not await watch.wait(deadline):
                    raise TimeoutError(f"job {self.id} not finished within {timeout} s")
                values = cast(
                    list[bytes | None], await redis.hmget(keys.job(self.id), _WATCH_FIELDS)
                )

    async def details(self) -> JobDetails:
        """The job's status, attempts, arguments, headers, timestamps (UTC datetimes),
        result or error and worker, read from its hash and its stream entry.

        ``args``, ``kwargs`` and ``headers`` are None once the entry is gone (trimmed
        by retention); see ``streamq.details.JobDetails``.

        Raises:
            JobNotFound: no such job (never enqueued, or its hash expired).
        """
        from streamq.details import read_details  # details builds on this module

        return await read_details(self._app, self.id)

    async def cancel(self) -> CancelResult:
        """Cancel the job: one that has not started never will; a running one is stopped.

        Returns ``CancelResult.CANCELLED`` when the job was waiting (queued,
        scheduled, or waiting for a retry): its message is gone and its status
        is ``cancelled``, in one step. ``REQUESTED`` when a worker already holds
        it: the worker stops it within about a second (an async handler is
        cancelled; a sync one is told through its context, see
        ``JobContext.cancel_requested``) and records ``cancelled``.
        ``ALREADY_FINAL`` changes nothing; ``NOT_FOUND``: no such job.
        Safe to call twice.
        """
        return (await cancel_jobs(self._app, [self.id]))[self.id]

    async def run_now(self) -> RunNowResult:
        """Run a delayed job (scheduled, or a retry waiting out its backoff) now.

        ``MOVED``: it is in its stream and the next free worker runs it;
        otherwise nothing changed (see ``streamq.delayed.RunNowResult``).
        """
        return (await run_now(self._app, [self.id]))[self.id]

    async def wait(self, timeout: float | None = None) -> JobStatus:
        """Wait until the job is final and return its status, never raising its failure."""
        with contextlib.suppress(JobFailed):
            await self.result(timeout)
        return await self.status()


def _update(values: list[bytes | None]) -> JobUpdate:
    status, percent, message, at_ms = values
    progress = (
        JobProgress(float(percent), (message or b"").decode(), int(at_ms or 0))
        if percent is not None
        else None
    )
    return JobUpdate(JobStatus((status or b"").decode()), progress)


def _present(values: list[bytes | None]) -> dict[bytes, bytes]:
    """The outcome fields HMGET found ({} when the job hash does not exist)."""
    return {k: v for k, v in zip(_OUTCOME_FIELDS, values, strict=True) if v is not None}
