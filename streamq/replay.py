"""Replay: read the retained history for audit, and re-drive old jobs.

The history is three streams of one queue: the events stream (every
lifecycle change, written by the script that made it), the priority streams
(every job message, kept after XACK until retention trims it) and the DLQ.
Each yields ``HistoryRecord``s in id order, so time filters are id ranges and
cost nothing to skip. ``story(job_id)`` merges all of them (and the job hash)
into one job's full story.
"""

from __future__ import annotations

import datetime as dt
import heapq
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from streamq.app import App
from streamq.errors import ConfigError
from streamq.keys import GROUP, Keyspace
from streamq.scripts import Scripts

_PAGE = 1000
_ID = re.compile(r"^\d+(-\d+)?$")
_FINAL = ("succeeded", "failed", "dead")
Bound = dt.datetime | dt.date | str | int | None


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    source: str
    """'event', 'message' (a job's stream entry), 'dlq' or 'job' (its current hash)."""
    id: str
    ts_ms: int
    kind: str
    """The event kind; 'message' for a stream entry, 'dead' for a DLQ entry, else the status."""
    job_id: str | None
    task: str | None
    fields: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        when = dt.datetime.fromtimestamp(self.ts_ms / 1000, dt.UTC).isoformat(
            timespec="milliseconds"
        )
        record: dict[str, Any] = {
            "source": self.source, "id": self.id, "time": when, "kind": self.kind,
            "job_id": self.job_id, "task": self.task,
        }  # fmt: skip
        # A message's own ``id`` field is the job id (already ``job_id``): the
        # record's keys win, so ``id`` stays the entry id that ``dlq`` takes.
        for key, value in self.fields.items():
            record.setdefault(key, value)
        return record


def parse_bound(value: Bound, *, end: bool = False) -> str | None:
    """A date, datetime, epoch ms or stream id → a stream id bound (inclusive).

    A date means its whole UTC day: as ``until`` it includes the day's end.
    Naive datetimes are taken as UTC. ConfigError for anything that is none
    of these or that no stream id can hold (before 1970, past 64 bits).
    """
    if value is None:
        return None
    seq = _MAX_SEQ if end else 0
    if isinstance(value, int):
        return _stream_id(value, seq, value)
    if isinstance(value, str):
        text = value.strip()
        match = _ID.match(text)
        if match:
            ms, _, given_seq = text.partition("-")
            return _stream_id(int(ms), int(given_seq) if given_seq else seq, value)
        try:
            value = (
                dt.datetime.fromisoformat(text)
                if "T" in text or " " in text
                else dt.date.fromisoformat(text)
            )
        except ValueError:
            raise ConfigError(f"{text!r} is not a date, datetime, epoch ms or stream id") from None
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return _stream_id(int(moment.timestamp() * 1000), seq, value)
    day_ms = int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp() * 1000)
    if end:  # in ms: the day after 9999-12-31 is past what a datetime can hold
        return _stream_id(day_ms + _DAY_MS - 1, _MAX_SEQ, value)
    return _stream_id(day_ms, 0, value)


def _stream_id(ms: int, seq: int, given: object) -> str:
    if ms < 0:
        raise ConfigError(f"{given!r} is before 1970, where stream ids start")
    if ms > _MAX_SEQ or seq > _MAX_SEQ:
        raise ConfigError(f"{given!r} does not fit a stream id (64-bit ms and sequence)")
    return f"{ms}-{seq}"


def bound_key(bound: str) -> tuple[int, int]:
    """A bound from ``parse_bound`` as (ms, seq), to compare two bounds."""
    return _key(bound)


_MAX_SEQ = 18446744073709551615
_DAY_MS = 86_400_000


class Replay:
    """Read one App's retained history."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def events(
        self, *, since: Bound = None, until: Bound = None, task: str | None = None,
        kinds: Iterable[str] | None = None, job: str | None = None,
    ) -> AsyncIterator[HistoryRecord]:  # fmt: skip
        """Lifecycle events, oldest first."""
        wanted = set(kinds) if kinds else None
        async for record in self._read(self.app.keys.events, "event", since, until):
            if _match(record, task, job) and (wanted is None or record.kind in wanted):
                yield record

    async def messages(
        self, *, since: Bound = None, until: Bound = None, task: str | None = None,
        status: str | None = None, job: str | None = None,
    ) -> AsyncIterator[HistoryRecord]:  # fmt: skip
        """Job messages from every priority stream, merged oldest first.

        ``status`` keeps jobs whose latest status is that one: from the job
        hash while it exists, else from the last final event in the history.
        """
        sources = [
            self._read(self.app.keys.stream(p), "message", since, until)
            for p in self.app.settings.priorities
        ]
        final = await self._final_kinds() if status else {}
        async for record in _merge(sources):
            if not _match(record, task, job):
                continue
            if status and await self._status_of(record.job_id, final) != status:
                continue
            yield record

    async def dead(
        self, *, since: Bound = None, until: Bound = None, task: str | None = None,
        job: str | None = None,
    ) -> AsyncIterator[HistoryRecord]:  # fmt: skip
        async for record in self._read(self.app.keys.dlq, "dlq", since, until):
            if _match(record, task, job):
                yield record

    async def story(self, job_id: str) -> list[HistoryRecord]:
        """Everything the history holds about one job, in time order."""
        records = [r async for r in self.events(job=job_id)]
        records += [r async for r in self.messages(job=job_id)]
        records += [r async for r in self.dead(job=job_id)]
        records.sort(key=lambda r: (r.ts_ms, _order(r)))
        info = await self.app.job(job_id).info()
        if info:
            if len(info.get("result", "")) > 4000:
                info["result"] = info["result"][:4000] + "…"
            ts = int(
                info.get("finished_ms") or info.get("started_ms") or info.get("enqueued_ms") or 0
            )
            records.append(
                HistoryRecord("job", "", ts, info.get("status", ""), job_id, info.get("task"), info)
            )
        return records

    async def follow(
        self, *, after: str = "$", task: str | None = None, kinds: Iterable[str] | None = None,
        job: str | None = None, block_ms: int = 1000,
    ) -> AsyncIterator[HistoryRecord]:  # fmt: skip
        """New events as they are written (XREAD BLOCK), until the caller stops iterating."""
        redis = await self.app.redis()
        wanted = set(kinds) if kinds else None
        last = after
        if last == "$":
            newest = cast(list[Any], await redis.xrevrange(self.app.keys.events, "+", "-", count=1))
            last = newest[0][0].decode() if newest else "0-0"
        while True:
            reply = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
                await redis.xread({self.app.keys.events: last}, count=_PAGE, block=block_ms),
            )
            for _stream, entries in reply or ():
                for entry_id, raw in entries:
                    last = entry_id.decode()
                    record = _record("event", entry_id, raw)
                    if _match(record, task, job) and (wanted is None or record.kind in wanted):
                        yield record

    async def redrive(self, records: Sequence[HistoryRecord], into: str | None = None) -> list[str]:
        """Enqueue the jobs of these message records again, as new jobs; returns their ids.

        ``into`` names the target queue (default: this one). Payloads are copied
        as stored, so they are not re-encoded and need not be importable here.
        """
        target = Keyspace(self.app.settings.prefix, into or self.app.name)
        scripts = await self.app.scripts()
        now_ms = int(time.time() * 1000)
        calls = []
        ids = []
        for record in records:
            if record.source != "message" or not record.task:
                raise ConfigError(
                    f"only job messages can be re-driven, not {record.source} {record.id}"
                )
            priority = record.fields.get("priority") or self.app.default_priority
            job_id = uuid.uuid4().hex
            ids.append(job_id)
            extra: list[str | bytes | int | float] = []
            for name in ("max_retries", "timeout"):
                if name in record.fields:
                    extra += [name, record.fields[name]]
            calls.append(
                Scripts.enqueue_call(
                    stream=target.stream(priority),
                    events=target.events,
                    group=GROUP,
                    task=record.task,
                    content_type=record.fields.get("ct", "json"),
                    jobs=[(job_id, target.job(job_id), record.fields.get("payload", "").encode())],
                    now_ms=now_ms,
                    priority=priority,
                    delayed=target.delayed,
                    extra=extra,
                )  # fmt: skip
            )
        for call in calls:  # one queue per call: safe on a cluster for any target
            await scripts.enqueue(call)
        return ids

    # -- internals ------------------------------------------------------------------

    async def _read(
        self, key: str, source: str, since: Bound, until: Bound
    ) -> AsyncIterator[HistoryRecord]:
        redis = await self.app.redis()
        start = parse_bound(since) or "-"
        stop = parse_bound(until, end=True) or "+"
        priority = self.app.priority_of_stream(key)
        while True:
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await redis.xrange(key, start, stop, count=_PAGE),
            )
            for entry_id, raw in page:
                record = _record(source, entry_id, raw)
                if priority is not None:
                    record.fields["priority"] = priority
                yield record
            if len(page) < _PAGE:
                return
            start = "(" + page[-1][0].decode()

    async def _final_kinds(self) -> dict[str, str]:
        final: dict[str, str] = {}
        async for record in self.events(kinds=(*_FINAL, "retried", "requeued")):
            if record.job_id:
                final[record.job_id] = record.kind
        return final

    async def _status_of(self, job_id: str | None, final: dict[str, str]) -> str | None:
        if not job_id:
            return None
        redis = await self.app.redis()
        status = await redis.hget(self.app.keys.job(job_id), "status")
        if status is not None:
            return cast(bytes, status).decode()
        return final.get(job_id)


def _record(source: str, entry_id: bytes, raw: dict[bytes, bytes]) -> HistoryRecord:
    fields = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
    text_id = entry_id.decode()
    # The entry id's time is the server's clock, the same for every stream, so
    # records from different streams sort consistently (``ts`` is a client's).
    ts_ms = int(text_id.split("-")[0])
    if source == "event":
        kind, job = fields.pop("kind", ""), fields.pop("job", None)
    elif source == "dlq":
        kind, job = "dead", fields.get("id")
    else:
        kind, job = "message", fields.get("id")
    task = fields.pop("task", None) if source == "event" else fields.get("task")
    return HistoryRecord(source, text_id, ts_ms, kind, job or None, task, fields)


def _match(record: HistoryRecord, task: str | None, job: str | None) -> bool:
    return (task is None or record.task == task) and (job is None or record.job_id == job)


def _order(record: HistoryRecord) -> int:
    # At the same millisecond, the message comes before the events about it.
    return {"message": 0, "event": 1, "dlq": 2, "job": 3}.get(record.source, 4)


async def _merge(sources: list[AsyncIterator[HistoryRecord]]) -> AsyncIterator[HistoryRecord]:
    """Merge id-ordered iterators by stream id (ms, seq)."""
    heap: list[tuple[tuple[int, int], int, HistoryRecord]] = []
    for index, source in enumerate(sources):
        first = await anext(source, None)
        if first is not None:
            heapq.heappush(heap, (_key(first.id), index, first))
    while heap:
        _, index, record = heapq.heappop(heap)
        yield record
        following = await anext(sources[index], None)
        if following is not None:
            heapq.heappush(heap, (_key(following.id), index, following))


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
