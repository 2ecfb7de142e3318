"""Replay: read the retained history for audit, and re-drive old jobs.

The history is three streams of one queue: the events stream (every
lifecycle change, written by the script that made it), the priority streams
(every job message, kept after XACK until retention trims it) and the DLQ.
Each yields ``HistoryRecord``s in id order, so time filters are id ranges and
cost nothing to skip. ``story(job_id)`` merges all of them (and the job hash)
into one job's full story.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, cast

import anyio
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from streamq.app import App
from streamq.archive import Archive, history
from streamq.errors import ConfigError
from streamq.ids import job_id_time_ms, new_job_id
from streamq.keys import GROUP, Keyspace
from streamq.records import ENTRY_ID as _ID
from streamq.records import Bound, HistoryRecord, bound_key, parse_bound
from streamq.records import entry_key as _key
from streamq.records import record_of as _record
from streamq.scripts import Scripts

__all__ = ["Bound", "HistoryRecord", "Replay", "bound_key", "parse_bound"]

_PAGE = 2000
_FINAL = ("succeeded", "failed", "dead", "cancelled")
CLOCK_SKEW_MS = 60_000
"""How far a producer's clock (which a job id's time comes from) may run ahead of
the server's (which stream ids come from) for a story read from the id's time."""
NEAR_SKEW_MS = 100
"""A story is first read from this long before the id's time (clocks kept by NTP agree
to a few ms); only if the job's first event is not there is CLOCK_SKEW_MS read."""
_FIRST = ("enqueued", "scheduled")


class Replay:
    """Read one App's history: the live streams, and the archive where there is one.

    ``archive`` (default: the App's ``settings.archive``) is read together with
    the live streams as one history: what retention trimmed comes from the
    archive, the rest from Redis, in one id order.
    """

    def __init__(self, app: App, archive: Archive | str | os.PathLike[str] | None = None) -> None:
        self.app = app
        location = archive if archive is not None else app.settings.archive
        self.archive: Archive | None = (
            location
            if location is None or isinstance(location, Archive)
            else Archive(location, window_s=app.settings.archive_window_s)
        )
        self._flat: Redis | None = None

    async def events(
        self, *, since: Bound = None, until: Bound = None, task: str | None = None,
        kinds: Iterable[str] | None = None, job: str | None = None,
    ) -> AsyncIterator[HistoryRecord]:  # fmt: skip
        """Lifecycle events, oldest first."""
        wanted = set(kinds) if kinds else None
        async for page in self._pages(self.app.keys.events, "event", since, until):
            for record in page:
                if (
                    (task is None or record.task == task)
                    and (job is None or record.job_id == job)
                    and (wanted is None or record.kind in wanted)
                ):
                    yield record

    async def messages(
        self, *, since: Bound = None, until: Bound = None, task: str | None = None,
        status: str | None = None, job: str | None = None,
    ) -> AsyncIterator[HistoryRecord]:  # fmt: skip
        """Job messages from every priority stream, merged oldest first.

        ``status`` keeps jobs whose latest status is that one: from the job
        hash while it exists, else from the last final event in the history.
        The hashes are read one pipelined round trip per page of records.
        """
        sources = [
            self._pages(self.app.keys.stream(p), "message", since, until)
            for p in self.app.settings.priorities
        ]
        final = await self._final_kinds() if status else {}
        chunk: list[HistoryRecord] = []
        async for record in _merge(sources):
            if (task is None or record.task == task) and (job is None or record.job_id == job):
                if not status:
                    yield record
                    continue
                chunk.append(record)
                if len(chunk) >= _PAGE:
                    for kept in await self._with_status(chunk, status, final):
                        yield kept
                    chunk = []
        if status and chunk:
            for kept in await self._with_status(chunk, status, final):
                yield kept

    async def dead(
        self, *, since: Bound = None, until: Bound = None, task: str | None = None,
        job: str | None = None,
    ) -> AsyncIterator[HistoryRecord]:  # fmt: skip
        async for page in self._pages(self.app.keys.dlq, "dlq", since, until):
            for record in page:
                if (task is None or record.task == task) and (job is None or record.job_id == job):
                    yield record

    async def story(self, job_id: str) -> list[HistoryRecord]:
        """Everything the history holds about one job, in time order.

        Read in time proportional to the job, not to the history: while the
        job hash lives it names every event of the job (``ev:<id>`` fields),
        and the events name the messages and DLQ entries they wrote (``msg``,
        ``dlq``), each fetched by id. Once the hash has expired, the events are
        read from the enqueue time the job id carries (``streamq.ids``) forward
        to the job's final event; only a job id without a time (a custom
        ``job_id``) whose hash is gone costs a scan of the events stream.
        """
        redis = await self.app.redis()
        raw = cast(dict[bytes, bytes], await redis.hgetall(self.app.keys.job(job_id)))
        info = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        indexed = sorted((k[3:] for k in info if k.startswith("ev:")), key=_key)
        if indexed:
            events = await self._entries(self.app.keys.events, "event", indexed)
        else:
            events = await self._events_of(job_id, info)
        records = [*events, *await self._written_by(job_id, events, info)]
        records.sort(key=lambda r: (r.ts_ms, _order(r)))
        if info:
            shown = {k: v for k, v in info.items() if not k.startswith("ev:")}
            if len(shown.get("result", "")) > 4000:
                shown["result"] = shown["result"][:4000] + "…"
            ts = int(
                shown.get("finished_ms") or shown.get("started_ms") or shown.get("enqueued_ms") or 0
            )
            records.append(
                HistoryRecord(
                    "job", "", ts, shown.get("status", ""), job_id, shown.get("task"), shown
                )
            )
        return records

    async def trimmed_before(self, key: str) -> str | None:
        """The oldest id stream ``key`` still holds when older entries were removed, else None.

        Retention trims a stream from its oldest end, so a range that starts
        before this id is missing its beginning (unless an archive holds it).
        ``entries-added`` counts every entry the stream ever had; fewer left
        than that means some were removed (trimmed, or deleted one by one).
        """
        redis = await self.app.redis()
        try:
            info: dict[str, Any] = await redis.xinfo_stream(key)
        except ResponseError:  # no such key: nothing was ever removed from it
            return None
        if int(info.get("entries-added") or 0) <= int(info.get("length") or 0):
            return None
        first = info.get("first-entry")
        oldest = first[0] if first else info.get("last-generated-id")
        return oldest.decode() if isinstance(oldest, bytes) else str(oldest)

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

        ``into`` names the target queue (default: this one; on a partition view, this
        partition; another queue: its partition 0, which its workers read). Payloads are copied
        byte for byte as stored, so they are not re-encoded and need not be
        importable here.
        """
        same = into is None or into == self.app.name  # back into this partition
        target = self.app.keys if same else Keyspace(self.app.settings.prefix, into or "")
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
            job_id = new_job_id()
            ids.append(job_id)
            extra: list[str | bytes | int | float] = []
            for name in ("max_retries", "timeout", "headers"):
                if name in record.fields:
                    extra += [name, record.fields[name]]
            payload = record.raw("payload") if "payload" in record.fields else b""
            calls.append(
                Scripts.enqueue_call(
                    stream=target.stream(priority),
                    events=target.events,
                    group=GROUP,
                    task=record.task,
                    content_type=record.fields.get("ct", "json"),
                    jobs=[(job_id, target.job(job_id), payload)],
                    now_ms=now_ms,
                    priority=priority,
                    delayed=target.delayed,
                    extra=extra,
                    signer=self.app.signer,  # re-driven by a key holder: signed anew
                )  # fmt: skip
            )
        for call in calls:  # one queue per call: safe on a cluster for any target
            await scripts.enqueue(call)
        return ids

    # -- internals ------------------------------------------------------------------

    async def _pages(
        self, key: str, source: str, since: Bound, until: Bound
    ) -> AsyncIterator[list[HistoryRecord]]:
        """The stream's entries in the range, a page (one XRANGE) at a time."""
        redis = await self.app.node_redis()
        start = parse_bound(since) or "-"
        stop = parse_bound(until, end=True) or "+"
        priority = self.app.priority_of_stream(key)
        if self.archive is not None:
            async for archived in self._archived_pages(key, source, start, stop, priority):
                yield archived
            return
        flat = self._flat_client(redis)
        while True:
            page = cast(
                list[tuple[bytes, list[bytes]]], await flat.xrange(key, start, stop, count=_PAGE)
            )
            records = [_record(source, entry_id, raw) for entry_id, raw in page]
            if priority is not None:
                for record in records:
                    record.fields["priority"] = priority
            yield records
            if len(page) < _PAGE:
                return
            start = "(" + page[-1][0].decode()

    def _flat_client(self, redis: Redis) -> Redis:
        """A client on the App's pool whose XRANGE replies stay flat lists.

        redis-py turns each entry's fields into a dict first, which costs about a
        tenth of reading the history; records are built from the flat list directly.
        """
        if self._flat is None or self._flat.connection_pool is not redis.connection_pool:
            self._flat = Redis(connection_pool=redis.connection_pool)
            self._flat.set_response_callback("XRANGE", _unchanged)
        return self._flat

    async def _archived_pages(
        self, key: str, source: str, start: str, stop: str, priority: str | None
    ) -> AsyncIterator[list[HistoryRecord]]:
        """As ``_pages``, from the archive and the live stream as one history."""
        redis = await self.app.node_redis()
        records: list[HistoryRecord] = []
        async for entry_id, raw in history(redis, self.archive, key, start, stop, page=_PAGE):
            record = _record(source, entry_id.encode(), raw)
            if priority is not None:
                record.fields["priority"] = priority
            records.append(record)
            if len(records) >= _PAGE:
                yield records
                records = []
        yield records

    async def _entries(self, key: str, source: str, ids: Sequence[str]) -> list[HistoryRecord]:
        """The entries of ``key`` with these ids (those retention has not trimmed)."""
        if not ids:
            return []
        redis = await self.app.redis()
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xrange(key, entry_id, entry_id, count=1)
            pages = cast(list[list[tuple[bytes, dict[bytes, bytes]]]], await pipe.execute())
        priority = self.app.priority_of_stream(key)
        found = [_record(source, entry_id, raw) for page in pages for entry_id, raw in page]
        archive = self.archive
        if archive is not None and len(found) < len(ids):  # trimmed: read them back
            live = {r.id for r in found}
            missing = [i for i in ids if i not in live]

            def read_missing() -> list[tuple[str, dict[bytes, bytes]]]:
                return [entry for i in missing for entry in archive.read(key, i, i)]

            archived = await anyio.to_thread.run_sync(read_missing)
            found += [_record(source, entry_id.encode(), raw) for entry_id, raw in archived]
        if priority is not None:
            for record in found:
                record.fields["priority"] = priority
        return found

    async def _events_of(self, job_id: str, info: dict[str, str]) -> list[HistoryRecord]:
        """A job's events without its hash's index: from its enqueue time to its end.

        Read from just before the time the job id carries; only if the job's
        first event is not there (the producer's clock ran ahead of the
        server's) is the minute before it read too.
        """
        enqueued_ms = job_id_time_ms(job_id) or int(info.get("enqueued_ms") or 0)
        if not enqueued_ms:
            return [r async for r in self.events(job=job_id)]
        near = max(0, enqueued_ms - min(NEAR_SKEW_MS, CLOCK_SKEW_MS))
        found = await self._scan_for(job_id, f"{near}-0", "+")
        if (not found or found[0].kind not in _FIRST) and CLOCK_SKEW_MS > NEAR_SKEW_MS:
            far = max(0, enqueued_ms - CLOCK_SKEW_MS)
            earlier = await self._scan_for(job_id, f"{far}-0", f"({near}-0", until_final=False)
            found = earlier + found
        return found

    async def _scan_for(
        self, job_id: str, start: str, stop: str, *, until_final: bool = True
    ) -> list[HistoryRecord]:
        """The job's events in [start, stop], up to its final one; other jobs' entries
        are skipped before they are decoded."""
        redis = await self.app.node_redis()
        key = self.app.keys.events
        found: list[HistoryRecord] = []
        if self.archive is not None:
            async for entry_id, raw in history(
                redis, self.archive, key, start, stop, page=_PAGE, contains=job_id
            ):
                record = _record("event", entry_id.encode(), raw)
                if record.job_id == job_id:
                    found.append(record)
                    if until_final and record.kind in _FINAL:
                        break
            return found
        wanted = job_id.encode()
        flat = self._flat_client(redis)
        while True:
            page = cast(
                list[tuple[bytes, list[bytes]]], await flat.xrange(key, start, stop, count=_PAGE)
            )
            for event_id, values in page:
                if wanted not in values:  # the job id is none of the entry's values
                    continue
                event = _record("event", event_id, values)
                if event.job_id == job_id:
                    found.append(event)
                    if until_final and event.kind in _FINAL:
                        return found
            if len(page) < _PAGE:
                return found
            start = "(" + page[-1][0].decode()

    async def _written_by(
        self, job_id: str, events: list[HistoryRecord], info: dict[str, str]
    ) -> list[HistoryRecord]:
        """The job messages and DLQ entries that these events (and the hash) name."""
        messages = {e.fields["msg"] for e in events if e.fields.get("msg")}
        dead = {e.fields["dlq"] for e in events if e.fields.get("dlq")}
        if _ID.match(info.get("msg_id", "")):
            messages.add(info["msg_id"])
        if _ID.match(info.get("dlq_id", "")):
            dead.add(info["dlq_id"])
        ordered = sorted(messages, key=_key)
        found: list[HistoryRecord] = []
        for priority in self.app.settings.priorities:  # an id alone does not name its stream
            found += await self._entries(self.app.keys.stream(priority), "message", ordered)
        found += await self._entries(self.app.keys.dlq, "dlq", sorted(dead, key=_key))
        return [r for r in found if r.job_id == job_id]

    async def _final_kinds(self) -> dict[str, str]:
        final: dict[str, str] = {}
        async for record in self.events(kinds=(*_FINAL, "retried", "requeued")):
            if record.job_id:
                final[record.job_id] = record.kind
        return final

    async def _with_status(
        self, records: list[HistoryRecord], status: str, final: dict[str, str]
    ) -> list[HistoryRecord]:
        """The records whose job's latest status is ``status``: one pipelined round trip."""
        redis = await self.app.redis()
        async with redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.hget(self.app.keys.job(record.job_id or ""), "status")
            current = cast(list[bytes | None], await pipe.execute())
        kept = []
        for record, now in zip(records, current, strict=True):
            latest = now.decode() if now is not None else final.get(record.job_id or "")
            if record.job_id and latest == status:
                kept.append(record)
        return kept


def _unchanged(response: Any, **_options: Any) -> Any:
    return response


def _match(record: HistoryRecord, task: str | None, job: str | None) -> bool:
    return (task is None or record.task == task) and (job is None or record.job_id == job)


def _order(record: HistoryRecord) -> int:
    # At the same millisecond, the message comes before the events about it.
    return {"message": 0, "event": 1, "dlq": 2, "job": 3}.get(record.source, 4)


async def _merge(
    sources: list[AsyncIterator[list[HistoryRecord]]],
) -> AsyncIterator[HistoryRecord]:
    """Merge id-ordered pages from several streams by stream id (ms, seq)."""
    pages: list[list[HistoryRecord]] = []
    heap: list[tuple[tuple[int, int], int, int]] = []  # (id key, source, index in page)
    none: list[HistoryRecord] = []
    for number, source in enumerate(sources):
        page = await anext(source, none)
        pages.append(page)
        if page:
            heapq.heappush(heap, (_key(page[0].id), number, 0))
    while heap:
        _, number, index = heapq.heappop(heap)
        page = pages[number]
        yield page[index]
        index += 1
        if index == len(page):
            page = pages[number] = await anext(sources[number], none)
            index = 0
        if index < len(page):
            heapq.heappush(heap, (_key(page[index].id), number, index))
