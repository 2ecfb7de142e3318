"""The dashboard's reads over every partition of a queue (``streamq.partitions``).

Each function reads what ``streamq.dashboard.data`` reads for one partition,
in every partition the queue covers (its configured count and its high-water
mark), and merges: workers by consumer name, job searches and the DLQ newest
first by entry id, delayed jobs by due time. A queue of one partition takes
the plain functions unchanged.

Paged lists over several streams go on from a cursor ``<partition>/<entry id>``:
the merged order is (entry id newest first, then partition), so a page goes on
exactly after the last row shown, even when two partitions hold the same id
(streams of one server often do: ``<ms>-0`` in each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import cast

from redis.asyncio import Redis

from streamq.app import App
from streamq.dashboard import data
from streamq.dashboard.charts import Bucket, BucketCache
from streamq.dlq import DeadLetter
from streamq.errors import ConfigError
from streamq.partition_ops import merge_sorted
from streamq.partitions import all_partitions, locate
from streamq.records import HistoryRecord, entry_key, parse_bound

Entry = tuple[int, bytes, dict[bytes, bytes]]
"""(partition, entry id, fields)."""
_PAGE = 200


def _cursor_ends(cursor: str | None, until: str, count: int) -> list[str]:
    """Each partition's XREVRANGE end for a cursor (see the module docstring)."""
    if not cursor:
        return [until] * count
    head, slash, entry_id = cursor.partition("/")
    if not slash or not head.isdigit() or not entry_id or entry_key_ok(entry_id) is None:
        raise ConfigError(f"bad cursor {cursor!r}: <partition>/<entry id> expected")
    after = int(head)
    return [entry_id if index > after else "(" + entry_id for index in range(count)]


def entry_key_ok(entry_id: str) -> tuple[int, int] | None:
    try:
        return entry_key(entry_id)
    except ValueError:
        return None


def cursor_of(index: int, entry_id: str) -> str:
    return f"{index}/{entry_id}"


async def _newest(redis: Redis, index: int, key: str, end: str, start: str) -> AsyncIterator[Entry]:
    while True:
        page = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrevrange(key, end, start, count=_PAGE),
        )
        for entry_id, fields in page:
            yield index, entry_id, fields
        if len(page) < _PAGE:
            return
        end = "(" + page[-1][0].decode()


def _newest_key(entry: Entry) -> tuple[int, int]:
    ms, seq = entry_key(entry[1].decode())
    return -ms, -seq  # ties: merge_sorted keeps source (partition) order


def newest_first(
    redis: Redis, keys: Sequence[str], cursor: str | None, until: str, start: str
) -> AsyncIterator[Entry]:
    """The entries of one stream per partition, merged newest first from ``cursor``."""
    ends = _cursor_ends(cursor, until, len(keys))
    sources = [_newest(redis, i, key, ends[i], start) for i, key in enumerate(keys)]
    return merge_sorted(sources, key=_newest_key)


# -- workers ------------------------------------------------------------------------------


async def workers(app: App) -> list[data.WorkerRow]:
    """Every consumer of every partition's group, merged by consumer name."""
    views = await all_partitions(app)
    if len(views) == 1:
        return await data.workers(app)
    rows: dict[str, data.WorkerRow] = {}
    for view in views:
        for row in await data.workers(view):
            seen = rows.get(row.name)
            if seen is None:
                rows[row.name] = row
                continue
            seen.pending += row.pending
            seen.idle_ms = min(seen.idle_ms, row.idle_ms)
            if row.inactive_ms is not None:
                seen.inactive_ms = min(seen.inactive_ms or row.inactive_ms, row.inactive_ms)
            seen.in_flight += row.in_flight[: max(0, data.IN_FLIGHT_SHOWN - len(seen.in_flight))]
    return sorted(rows.values(), key=lambda r: r.name)


# -- jobs -----------------------------------------------------------------------------------


async def search_jobs(
    app: App, *, task: str | None = None, status: str | None = None,
    since: str | None = None, until: str | None = None, cursor: str | None = None,
    limit: int = data.PAGE,
) -> data.JobPage:  # fmt: skip
    """``data.search_jobs`` over every partition's events, newest first."""
    views = await all_partitions(app)
    if len(views) == 1:
        return await data.search_jobs(
            app, task=task, status=status, since=since, until=until, cursor=cursor, limit=limit
        )
    kinds = data.SEARCH_KINDS.get(status or "", data.ENQUEUE_KINDS)
    end = parse_bound(until, end=True) or "+"
    start = parse_bound(since) or "-"
    redis = await app.redis()
    entries = newest_first(redis, [v.keys.events for v in views], cursor, end, start)
    rows: list[data.JobRow] = []
    seen: set[str] = set()
    scanned = 0
    batch: list[tuple[int, str, str, str | None]] = []
    last = ""

    async def settle() -> str | None:
        """Rows of the batch's candidates; the cursor once the page is full."""
        by_view: dict[int, list[tuple[str, str, str | None]]] = {}
        for index, event_id, job_id, job_task in batch:
            by_view.setdefault(index, []).append((event_id, job_id, job_task))
        found: dict[tuple[int, str], data.JobRow] = {}
        for index, candidates in by_view.items():
            for row in await data._job_rows(views[index], candidates):
                found[(index, row.event_id)] = row
        for index, event_id, _job, _task in batch:
            row = found[(index, event_id)]
            if status and row.status != status:
                continue
            rows.append(row)
            if len(rows) >= limit:
                return cursor_of(index, event_id)
        batch.clear()
        return None

    async for index, entry_id, fields in entries:
        scanned += 1
        last = cursor_of(index, entry_id.decode())
        kind = data.text(fields.get(b"kind", b""))
        job_id = data.text(fields.get(b"job", b""))
        job_task = data.text(fields[b"task"]) if b"task" in fields else None
        if kind in kinds and job_id and job_id not in seen and (not task or job_task == task):
            seen.add(job_id)
            batch.append((index, entry_id.decode(), job_id, job_task))
        settled = len(batch) >= data.PAGE or scanned >= data.SCAN_MAX
        if settled and (full := await settle()) is not None:
            return data.JobPage(rows, full, scanned)
        if scanned >= data.SCAN_MAX:
            return data.JobPage(rows, last, scanned)
    if (full := await settle()) is not None:
        return data.JobPage(rows, full, scanned)
    return data.JobPage(rows, None, scanned)


async def place(app: App, job_id: str) -> App | None:
    """The partition view holding the job's hash (None: no partition holds it)."""
    index = (await locate(app, [job_id]))[job_id]
    if index is None:
        return None
    view = app.root.partition(index)
    if len(await all_partitions(app)) == 1 and not await (await app.redis()).exists(
        view.keys.job(job_id)
    ):
        return None  # one partition: locate does not probe
    return view


async def story(app: App, job_id: str) -> tuple[list[HistoryRecord], bool]:
    """``data.story`` from the partition that holds the job, else the first partition
    whose events name it (its hash expired); ([], False) when none does."""
    view = await place(app, job_id)
    if view is not None:
        return await data.story(view, job_id)
    found: tuple[list[HistoryRecord], bool] = ([], False)
    for view in await all_partitions(app):
        found = await data.story(view, job_id)
        if found[0]:
            return found
    return found


# -- DLQ ------------------------------------------------------------------------------------


async def dead_letters(
    app: App, *, task: str | None = None, cursor: str | None = None, limit: int = data.PAGE
) -> data.DeadPage:
    """``data.dead_letters`` over every partition, newest first; entries of partition
    p >= 1 are addressed ``p/<entry id>`` (``streamq.partition_ops``)."""
    views = await all_partitions(app)
    if len(views) == 1:
        return await data.dead_letters(app, task=task, cursor=cursor, limit=limit)
    redis = await app.redis()
    async with redis.pipeline(transaction=False) as pipe:
        for view in views:
            pipe.xlen(view.keys.dlq)
        total = sum(int(n) for n in await pipe.execute())
    letters: list[DeadLetter] = []
    scanned = 0
    async for index, entry_id, raw in newest_first(
        redis, [v.keys.dlq for v in views], cursor, "+", "-"
    ):
        scanned += 1
        here = cursor_of(index, entry_id.decode())
        letter = DeadLetter.from_entry(entry_id, raw)
        if not task or letter.task == task:
            if index:
                letter = dataclasses.replace(letter, id=f"{index}/{letter.id}")
            letters.append(letter)
            if len(letters) >= limit:
                return data.DeadPage(letters, here, total)
        if scanned >= data.SCAN_MAX:
            return data.DeadPage(letters, here, total)
    return data.DeadPage(letters, None, total)


# -- delayed --------------------------------------------------------------------------------


async def delayed(app: App, *, offset: int = 0, limit: int = data.PAGE) -> data.DelayedPage:
    """``data.delayed`` over every partition, by due time (ties: partition order).

    Reads the first ``offset + limit`` members of each partition's delayed set: a
    deep page costs partitions × (offset + page) members, a first page only
    partitions × page.
    """
    views = await all_partitions(app)
    if len(views) == 1:
        return await data.delayed(app, offset=offset, limit=limit)
    offset = max(0, offset)
    pages = [await data.delayed(view, offset=0, limit=offset + limit) for view in views]
    merged = sorted(
        ((row.due_ms, index, n, row) for index, page in enumerate(pages)
         for n, row in enumerate(page.rows)),
        key=lambda t: t[:3],
    )  # fmt: skip
    rows = [row for *_, row in merged[offset : offset + limit]]
    return data.DelayedPage(rows, offset, sum(page.total for page in pages))


# -- the overview's chart --------------------------------------------------------------------


async def last_hour(cache: BucketCache, app: App, now_ms: int) -> list[Bucket]:
    """The throughput chart's minutes, summed over every partition's events."""
    redis = await app.redis()
    per_view = [
        await cache.last_hour(redis, view.keys.events, now_ms) for view in await all_partitions(app)
    ]
    if len(per_view) == 1:
        return per_view[0]
    return [
        Bucket(
            column[0].start_ms,
            sum(b.succeeded for b in column),
            sum(b.failed for b in column),
            sum(b.retried for b in column),
            any(b.estimated for b in column),
        )
        for column in zip(*per_view, strict=True)
    ]
