"""The dashboard's reads: every one bounded (COUNT limits, pages), none a scan per refresh.

Each function reads one page's data for one App; the routes render it. Job
lookups by id are a direct HGETALL; job searches walk the events stream
newest first, a bounded number of entries per request, and hand back a
cursor to go on from.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import ResponseError

from streamq.app import App
from streamq.cron import ScheduleInfo, list_schedules
from streamq.dlq import DeadLetter
from streamq.envelope import delayed_member
from streamq.ids import job_id_time_ms
from streamq.keys import GROUP
from streamq.records import HistoryRecord, parse_bound, record_of
from streamq.replay import NEAR_SKEW_MS, Replay

PAGE = 50
"""Rows per page."""
SCAN_MAX = 5_000
"""Events a job search reads per request at most."""
_SCAN_PAGE = 500
IN_FLIGHT_SHOWN = 20
"""Pending entries listed per consumer and stream."""
CONSUMERS_MAX = 200
_JOB_FIELDS = ("status", "task", "attempts", "priority", "enqueued_ms", "finished_ms", "worker")
SEARCH_KINDS = {
    "succeeded": ("succeeded",),
    "failed": ("failed",),
    "dead": ("dead",),
    "cancelled": ("cancelled",),
    "retrying": ("retried",),
}
"""A status searched by the events that lead to it; any other by enqueue events."""
ENQUEUE_KINDS = ("enqueued", "scheduled", "deferred")
STATUSES = (
    "scheduled", "queued", "running", "deferred", "retrying",
    "succeeded", "failed", "dead", "cancelled",
)  # fmt: skip


async def server_ms(app: App) -> int:
    redis = await app.node_redis()
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def shown_json(value: Any) -> str:
    """A value as indented JSON for a <pre> (escaped by the template, never marked safe)."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=repr, sort_keys=False)
    except (TypeError, ValueError):
        return repr(value)


# -- workers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InFlight:
    priority: str
    msg_id: str
    job_id: str | None
    task: str | None
    idle_ms: int
    deliveries: int


@dataclass(slots=True)
class WorkerRow:
    name: str
    host: str
    pid: str
    pending: int
    idle_ms: int
    """Since it last read or claimed (a heartbeat claims, so a busy worker stays low)."""
    inactive_ms: int | None
    """Since its last successful read or claim (servers that report it)."""
    in_flight: list[InFlight]


async def workers(app: App) -> list[WorkerRow]:
    """Every consumer of the queue's group, merged over the priority streams."""
    redis = await app.redis()
    priorities = app.settings.priorities
    async with redis.pipeline(transaction=False) as pipe:
        for priority in priorities:
            pipe.xinfo_consumers(app.keys.stream(priority), GROUP)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    rows: dict[str, WorkerRow] = {}
    asks: list[tuple[str, str]] = []
    for priority, reply in zip(priorities, replies, strict=True):
        if isinstance(reply, ResponseError):
            continue  # no stream or group yet
        for consumer in reply[:CONSUMERS_MAX]:
            name = text(consumer["name"])
            host, _, rest = name.partition(":")
            pid = rest.partition(":")[0]
            idle = int(consumer.get("idle", 0))
            inactive = consumer.get("inactive")
            inactive_ms = None if inactive is None or int(inactive) < 0 else int(inactive)
            row = rows.setdefault(name, WorkerRow(name, host, pid, 0, idle, inactive_ms, []))
            row.pending += int(consumer.get("pending", 0))
            row.idle_ms = min(row.idle_ms, idle)
            if inactive_ms is not None:
                row.inactive_ms = min(row.inactive_ms or inactive_ms, inactive_ms)
            if int(consumer.get("pending", 0)):
                asks.append((priority, name))
    if asks:
        async with redis.pipeline(transaction=False) as pipe:
            for priority, name in asks:
                pipe.xpending_range(
                    app.keys.stream(priority), GROUP, "-", "+", IN_FLIGHT_SHOWN, consumername=name
                )
            pendings: list[Any] = await pipe.execute(raise_on_error=False)
        wanted: list[tuple[str, str, dict[str, Any]]] = []
        for (priority, name), reply in zip(asks, pendings, strict=True):
            if isinstance(reply, ResponseError):
                continue
            wanted.extend((priority, name, entry) for entry in reply)
        async with redis.pipeline(transaction=False) as pipe:
            for priority, _name, entry in wanted:
                msg_id = text(entry["message_id"])
                pipe.xrange(app.keys.stream(priority), msg_id, msg_id, count=1)
            entries: list[Any] = await pipe.execute(raise_on_error=False)
        for (priority, name, entry), found in zip(wanted, entries, strict=True):
            fields = found[0][1] if isinstance(found, list) and found else {}
            rows[name].in_flight.append(
                InFlight(
                    priority, text(entry["message_id"]),
                    text(fields[b"id"]) if b"id" in fields else None,
                    text(fields[b"task"]) if b"task" in fields else None,
                    int(entry.get("time_since_delivered", 0)),
                    int(entry.get("times_delivered", 0)),
                )
            )  # fmt: skip
    return sorted(rows.values(), key=lambda r: r.name)


# -- jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    task: str | None
    status: str | None
    """None once the job hash expired (the history still names the job)."""
    attempts: str | None
    priority: str | None
    enqueued_ms: int | None
    finished_ms: int | None
    event_id: str
    """The event the search found the job by."""


@dataclass(frozen=True, slots=True)
class JobPage:
    rows: list[JobRow]
    next_cursor: str | None
    """Where an "older" link goes on from (an exclusive events-stream id)."""
    scanned: int


async def search_jobs(
    app: App, *, task: str | None = None, status: str | None = None,
    since: str | None = None, until: str | None = None, cursor: str | None = None,
    limit: int = PAGE,
) -> JobPage:  # fmt: skip
    """Jobs newest first, found through their events (enqueue events, or the events
    that lead to ``status``), reading at most ``SCAN_MAX`` events; ConfigError for a
    bad ``since``/``until``."""
    redis = await app.redis()
    kinds = SEARCH_KINDS.get(status or "", ENQUEUE_KINDS)
    end = cursor or parse_bound(until, end=True) or "+"
    start = parse_bound(since) or "-"
    rows: list[JobRow] = []
    seen: set[str] = set()
    scanned = 0
    while True:
        page = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrevrange(app.keys.events, end, start, count=_SCAN_PAGE),
        )
        scanned += len(page)
        candidates: list[tuple[str, str, str | None]] = []
        for entry_id, fields in page:
            kind = text(fields.get(b"kind", b""))
            job_id = text(fields.get(b"job", b""))
            job_task = text(fields[b"task"]) if b"task" in fields else None
            if kind not in kinds or not job_id or job_id in seen:
                continue
            if task and job_task != task:
                continue
            seen.add(job_id)
            candidates.append((text(entry_id), job_id, job_task))
        for row in await _job_rows(app, candidates):
            if status and row.status != status:
                continue
            rows.append(row)
            if len(rows) >= limit:
                return JobPage(rows, "(" + row.event_id, scanned)
        if len(page) < _SCAN_PAGE:
            return JobPage(rows, None, scanned)
        end = "(" + text(page[-1][0])
        if scanned >= SCAN_MAX:
            return JobPage(rows, end, scanned)


async def _job_rows(app: App, found: Sequence[tuple[str, str, str | None]]) -> list[JobRow]:
    if not found:
        return []
    redis = await app.redis()
    async with redis.pipeline(transaction=False) as pipe:
        for _event_id, job_id, _task in found:
            pipe.hmget(app.keys.job(job_id), _JOB_FIELDS)
        replies = cast(list[list[bytes | None]], await pipe.execute())
    rows = []
    for (event_id, job_id, job_task), values in zip(found, replies, strict=True):
        status, task, attempts, priority, enqueued, finished, _worker = (
            None if v is None else text(v) for v in values
        )
        rows.append(
            JobRow(
                job_id, task or job_task, status, attempts, priority,
                _int(enqueued), _int(finished), event_id,
            )
        )  # fmt: skip
    return rows


# -- DLQ ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadPage:
    letters: list[DeadLetter]
    next_cursor: str | None
    total: int


async def dead_letters(
    app: App, *, task: str | None = None, cursor: str | None = None, limit: int = PAGE
) -> DeadPage:
    """DLQ entries newest first (of one task), reading at most ``SCAN_MAX`` entries."""
    redis = await app.redis()
    end = cursor or "+"
    letters: list[DeadLetter] = []
    scanned = 0
    total = int(await redis.xlen(app.keys.dlq))
    while True:
        page = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrevrange(app.keys.dlq, end, "-", count=_SCAN_PAGE),
        )
        scanned += len(page)
        for entry_id, raw in page:
            letter = DeadLetter.from_entry(entry_id, raw)
            if task and letter.task != task:
                continue
            letters.append(letter)
            if len(letters) >= limit:
                return DeadPage(letters, "(" + letter.id, total)
        if len(page) < _SCAN_PAGE:
            return DeadPage(letters, None, total)
        end = "(" + text(page[-1][0])
        if scanned >= SCAN_MAX:
            return DeadPage(letters, end, total)


# -- delayed ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DelayedRow:
    job_id: str | None
    task: str | None
    priority: str | None
    attempt: str | None
    due_ms: int


@dataclass(frozen=True, slots=True)
class DelayedPage:
    rows: list[DelayedRow]
    offset: int
    total: int


async def delayed(app: App, *, offset: int = 0, limit: int = PAGE) -> DelayedPage:
    """Scheduled jobs and retries by due time, one page (ZRANGE … WITHSCORES)."""
    redis = await app.redis()
    offset = max(0, offset)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(app.keys.delayed)
        pipe.zrange(app.keys.delayed, offset, offset + limit - 1, withscores=True)
        total, members = await pipe.execute()
    rows = []
    for member, score in members:
        priority, fields = delayed_member(member) or (None, {})
        rows.append(
            DelayedRow(
                _str(fields.get("id")), _str(fields.get("task")), priority,
                _str(fields.get("attempt")), int(score),
            )
        )  # fmt: skip
    return DelayedPage(rows, offset, int(total))


# -- schedules and limits -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitRow:
    task: str
    rate: str | None
    burst: int | None
    key: str | None
    concurrency: int | None
    """Slots of the whole task (None: no task-wide concurrency limit)."""
    holders: int | None
    """Slots held now (task-wide); per-key holders are not listed (one zset per value)."""


async def schedules(app: App) -> list[ScheduleInfo]:
    return await list_schedules(app)


async def limits(app: App) -> list[LimitRow]:
    rows = []
    for name, task in sorted(app.tasks.items()):
        limit = task.options.limit
        concurrency = task.options.concurrency
        if limit is None and concurrency is None:
            continue
        task_slots = [c for c in (concurrency,) if c is not None]
        if limit is not None and limit.concurrency is not None and limit.key is None:
            task_slots.append(limit.concurrency)
        rows.append(
            LimitRow(
                name, limit.rate if limit else None, limit.burst if limit else None,
                limit.key if limit else None, min(task_slots) if task_slots else None, None,
            )
        )  # fmt: skip
    if not rows:
        return rows
    redis = await app.redis()
    now = await server_ms(app)
    async with redis.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.zcount(app.keys.slots(row.task), now, "+inf")
        counts = await pipe.execute()
    return [
        LimitRow(r.task, r.rate, r.burst, r.key, r.concurrency, int(c))
        for r, c in zip(rows, counts, strict=True)
    ]


def _int(raw: str | None) -> int | None:
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def when(ms: int | None) -> str:
    """Epoch ms as ``2026-01-02 03:04:05`` UTC (what every page shows)."""
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- one job's story --------------------------------------------------------------------------

STORY_SCAN_MAX = 5_000
"""Events read for the story of a job whose hash expired (no index of its events left)."""


async def story(app: App, job_id: str) -> tuple[list[HistoryRecord], bool]:
    """The job's story and whether it is complete.

    While the job hash lives, ``Replay.story`` reads exactly the job's events
    (the hash indexes them). Once it expired, ``Replay.story`` would scan the
    events stream from the job's enqueue time on, which a busy queue makes
    long: here only ``STORY_SCAN_MAX`` events from that time are read (none for
    an id that carries no time); ``streamq replay --job`` reads the rest.
    """
    redis = await app.redis()
    if await redis.exists(app.keys.job(job_id)):
        return await Replay(app).story(job_id), True
    enqueued_ms = job_id_time_ms(job_id)
    if enqueued_ms is None:
        return [], False
    start = f"{max(0, enqueued_ms - NEAR_SKEW_MS)}-0"
    page = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        await redis.xrange(app.keys.events, start, "+", count=STORY_SCAN_MAX),
    )
    wanted = job_id.encode()
    found = [
        record_of("event", entry_id, fields)
        for entry_id, fields in page
        if fields.get(b"job") == wanted
    ]
    final = any(r.kind in ("succeeded", "failed", "dead", "cancelled") for r in found)
    return found, final or len(page) < STORY_SCAN_MAX
