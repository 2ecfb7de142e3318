"""The dead-letter queue: inspect, requeue and purge dead jobs.

A DLQ entry holds the original stream entry's fields (when they still
existed) plus ``dlq_*`` fields: why it died, where it came from, its delivery
count, and for a handler failure the last error and traceback. Requeueing
moves it back to its priority stream as a fresh first attempt in one script,
so an entry is never in both places or in neither.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from streamq.app import App
from streamq.errors import StreamqError
from streamq.keys import GROUP

_PAGE = 500
_ENTRY_ID = re.compile(r"(\d+)-(\d+)", re.ASCII)
_MAX_PART = 2**64 - 1


def check_entry_id(entry_id: str) -> str:
    """``entry_id`` if it has a stream entry id's ``<ms>-<seq>`` shape, else ValueError.

    Both parts must fit in 64 bits, as Redis requires; nothing is looked up.
    """
    match = _ENTRY_ID.fullmatch(entry_id) if isinstance(entry_id, str) else None
    if match is None or int(match[1]) > _MAX_PART or int(match[2]) > _MAX_PART:
        raise ValueError(f"{entry_id!r} is not a DLQ entry id (<ms>-<seq>, e.g. 1700000000000-0)")
    return entry_id


class DeadLetterNotFound(StreamqError, LookupError):
    """Raised for a DLQ entry id that is not (or no longer) in the DLQ."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"no DLQ entry {entry_id!r} (requeued or purged?)")
        self.entry_id = entry_id


class RequeueRefused(StreamqError, ValueError):
    """Raised when a DLQ entry cannot be requeued; nothing was written.

    ``reason`` is a short code: ``no-job-id`` (garbage that never was a job:
    purge it), ``too-large`` (more fields than a script can copy).
    """

    def __init__(self, entry_id: str, reason: str, message: str) -> None:
        super().__init__(f"DLQ entry {entry_id} cannot be requeued: {message}")
        self.entry_id = entry_id
        self.reason = reason


class JobIdReused(RequeueRefused):
    """Raised when requeueing would reset a newer job that reuses the entry's job id.

    The dead job's hash expired and a new job was enqueued under the same id:
    that job hash belongs to the new job, which a requeue would set back to
    ``queued`` and run again. Enqueue a new job instead, or purge the entry.
    """

    def __init__(self, entry_id: str, job_id: str, message: str) -> None:
        super().__init__(entry_id, "job-id-reused", message)
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    """The DLQ entry id (also when it died: ms-seq)."""
    job_id: str | None
    task: str | None
    reason: str
    error_type: str
    error: str
    traceback: str
    attempts: int | None
    deliveries: int | None
    origin_stream: str
    origin_id: str
    dead_ms: int
    fields: dict[str, str]
    """Every field of the entry, decoded leniently, for ``dlq show``."""

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.dead_ms / 1000)

    @classmethod
    def from_entry(cls, entry_id: bytes, raw: dict[bytes, bytes]) -> DeadLetter:
        f = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
        dead_ms = _int(f.get("dlq_ms")) or int(entry_id.split(b"-")[0])
        return cls(
            id=entry_id.decode(),
            job_id=f.get("id"),
            task=f.get("task"),
            reason=f.get("dlq_reason", ""),
            error_type=f.get("dlq_error_type", ""),
            error=f.get("dlq_error", ""),
            traceback=f.get("dlq_traceback", ""),
            attempts=_int(f.get("dlq_attempts") or f.get("attempt")),
            deliveries=_int(f.get("dlq_deliveries")),
            origin_stream=f.get("dlq_origin", ""),
            origin_id=f.get("dlq_origin_id", ""),
            dead_ms=dead_ms,
            fields=f,
        )


class DeadLetters:
    """The DLQ of one App's queue."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def count(self) -> int:
        redis = await self.app.redis()
        return int(await redis.xlen(self.app.keys.dlq))

    async def iter(self, *, task: str | None = None) -> AsyncIterator[DeadLetter]:
        """Every entry, oldest first, optionally only those of one task."""
        redis = await self.app.redis()
        start = "-"
        while True:
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await redis.xrange(self.app.keys.dlq, start, "+", count=_PAGE),
            )
            for entry_id, raw in page:
                letter = DeadLetter.from_entry(entry_id, raw)
                if task is None or letter.task == task:
                    yield letter
            if len(page) < _PAGE:
                return
            start = "(" + page[-1][0].decode()

    async def entries(self, *, limit: int = 100, task: str | None = None) -> list[DeadLetter]:
        """Up to ``limit`` entries, oldest first."""
        return await first(self.iter(task=task), limit)

    async def get(self, entry_id: str) -> DeadLetter:
        """The entry; DeadLetterNotFound if it is gone, ValueError if ``entry_id`` is no id."""
        check_entry_id(entry_id)
        redis = await self.app.redis()
        page = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrange(self.app.keys.dlq, entry_id, entry_id),
        )
        if not page:
            raise DeadLetterNotFound(entry_id)
        return DeadLetter.from_entry(*page[0])

    async def requeue(self, entry_id: str) -> str:
        """Move one entry back to its priority stream; returns the job id.

        Raises DeadLetterNotFound if it is gone, RequeueRefused (a
        ValueError) when the script refuses it, e.g. an entry with no job id
        (garbage that never was a job: purge it instead), and ValueError if
        ``entry_id`` is not an entry id at all.
        """
        letter = await self.get(entry_id)
        if not letter.job_id:
            raise RequeueRefused(entry_id, "no-job-id", "it has no job id")
        app = self.app
        priority = self._priority_of(letter)
        scripts = await app.scripts()
        new_id = await scripts.requeue(
            dlq=app.keys.dlq,
            stream=app.keys.stream(priority),
            job_key=app.keys.job(letter.job_id),
            events=app.keys.events,
            dlq_id=entry_id,
            group=GROUP,
            now_ms=int(time.time() * 1000),
            priority=priority,
        )
        if new_id is None:
            raise DeadLetterNotFound(entry_id)
        if isinstance(new_id, tuple):
            reason, message = new_id
            if reason == "job-id-reused":
                raise JobIdReused(entry_id, letter.job_id, message)
            raise RequeueRefused(entry_id, reason, message)
        return letter.job_id

    async def requeue_all(self, *, task: str | None = None) -> list[str]:
        """Requeue every entry (of one task) that has a job id; returns the job ids.

        Entries the script refuses (RequeueRefused) stay in the DLQ.
        """
        ids = [letter.id async for letter in self.iter(task=task) if letter.job_id]
        requeued = []
        for entry_id in ids:
            try:
                requeued.append(await self.requeue(entry_id))
            except DeadLetterNotFound:
                continue  # requeued or purged by someone else meanwhile
            except RequeueRefused:
                continue
        return requeued

    async def purge(self, *, older_than_s: float | None = None) -> int:
        """Delete entries (older than ``older_than_s``, or all); returns how many."""
        redis = await self.app.redis()
        if older_than_s is None:
            return int(await redis.xtrim(self.app.keys.dlq, maxlen=0, approximate=False))
        min_id = f"{int((time.time() - older_than_s) * 1000)}-0"
        return int(await redis.xtrim(self.app.keys.dlq, minid=min_id, approximate=False))

    def _priority_of(self, letter: DeadLetter) -> str:
        priority = self.app.priority_of_stream(letter.origin_stream)
        if priority is not None:
            return priority
        task = self.app.tasks.get(letter.task or "")
        if task is not None:
            return task.options.priority
        return self.app.default_priority


def _int(raw: str | None) -> int | None:
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


async def first(letters: AsyncIterator[DeadLetter], limit: int) -> list[DeadLetter]:
    """The first ``limit`` letters of an iteration (it stops reading there)."""
    out: list[DeadLetter] = []
    async for letter in letters:
        out.append(letter)
        if len(out) >= limit:
            break
    return out
