"""Operator views over every partition of a queue (``streamq.partitions``).

Each tool runs per partition, on the partition's App view, and merges: stats
sum their counts, the DLQ lists every partition's entries (ids of partition
``p >= 1`` read ``p/<entry id>``, since entry ids are per stream and two
partitions can hold the same one), replay merges records by time, and
``empty`` cancels in each. They cover the partitions of the queue's
high-water mark too, so nothing in a partition beyond a lowered count hides.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio

from streamq.dlq import DeadLetter, DeadLetters, check_entry_id, first
from streamq.partitions import all_partitions, locate
from streamq.records import entry_key
from streamq.replay import Replay
from streamq.stats import ConsumerStats, History, PriorityStats, QueueStats, Throughput, collect

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from streamq.app import App
    from streamq.records import HistoryRecord

T = TypeVar("T")


# -- stats --------------------------------------------------------------------------------


def _sum_priority(rows: list[PriorityStats]) -> PriorityStats:
    lags = [r.lag for r in rows]
    ages = [r.oldest_pending_age_s for r in rows if r.oldest_pending_age_s is not None]
    consumers: dict[str, ConsumerStats] = {}
    for row in rows:
        for c in row.consumers:
            seen = consumers.get(c.name)
            consumers[c.name] = (
                c
                if seen is None
                else ConsumerStats(c.name, seen.pending + c.pending, min(seen.idle_ms, c.idle_ms))
            )
    return dataclasses.replace(
        rows[0],
        length=sum(r.length for r in rows),
        lag=None if None in lags else sum(lag or 0 for lag in lags),
        lag_estimated=any(r.lag_estimated for r in rows),
        pending=sum(r.pending for r in rows),
        oldest_pending_age_s=max(ages) if ages else None,
        consumers=tuple(consumers.values()),
    )


def merge_stats(parts: list[QueueStats]) -> QueueStats:
    """One snapshot of a partitioned queue: counts summed per priority, every
    partition's history streams listed."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    t = [p.throughput for p in parts]
    return QueueStats(
        queue=first.queue,
        server_time_ms=max(p.server_time_ms for p in parts),
        priorities=tuple(
            _sum_priority([p.priorities[i] for p in parts]) for i in range(len(first.priorities))
        ),
        delayed=sum(p.delayed for p in parts),
        dlq=sum(p.dlq for p in parts),
        throughput=Throughput(
            window_s=first.throughput.window_s,
            succeeded=sum(x.succeeded for x in t),
            failed=sum(x.failed for x in t),
            retried=sum(x.retried for x in t),
            dead=sum(x.dead for x in t),
        ),
        history=History(tuple(h for p in parts for h in p.history.streams)),
    )


async def collect_all(app: App) -> QueueStats:
    """``streamq.stats.collect`` over every partition, merged."""
    return merge_stats([await collect(view) for view in await all_partitions(app)])


# -- the DLQ ------------------------------------------------------------------------------


def split_entry_id(address: str) -> tuple[int, str]:
    """``"3/1700000000000-0"`` -> (3, "1700000000000-0"); a bare id is partition 0's.
    ValueError for anything else."""
    head, slash, tail = address.partition("/") if isinstance(address, str) else ("", "", "")
    if not slash:
        return 0, check_entry_id(address)
    if not head.isdigit() or not 0 < int(head) < 1024:
        raise ValueError(
            f"{address!r} is not a DLQ entry id (<ms>-<seq>, or <partition>/<ms>-<seq>)"
        )
    return int(head), check_entry_id(tail)


def _addressed(letter: DeadLetter, index: int) -> DeadLetter:
    return letter if index == 0 else dataclasses.replace(letter, id=f"{index}/{letter.id}")


class AllDeadLetters:
    """``DeadLetters`` over every partition; entry ids as ``split_entry_id`` reads them."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def _each(self) -> list[tuple[int, DeadLetters]]:
        return [(v.partition_index, DeadLetters(v)) for v in await all_partitions(self.app)]

    async def count(self) -> int:
        return sum([await dlq.count() for _, dlq in await self._each()])

    async def iter(self, *, task: str | None = None) -> AsyncIterator[DeadLetter]:
        """Every partition's entries, oldest first (merged by the time each died)."""
        sources = [
            _tagged(dlq.iter(task=task), index) for index, dlq in await self._each()
        ]  # fmt: skip
        async for letter in merge_sorted(sources, key=lambda d: _id_key(d.id)):
            yield letter

    async def entries(self, *, limit: int = 100, task: str | None = None) -> list[DeadLetter]:
        """Up to ``limit`` entries of every partition, oldest first."""
        return await first(self.iter(task=task), limit)

    def _one(self, address: str) -> tuple[int, DeadLetters, str]:
        index, entry_id = split_entry_id(address)
        return index, DeadLetters(self.app.root.partition(index)), entry_id

    async def get(self, address: str) -> DeadLetter:
        index, dlq, entry_id = self._one(address)
        return _addressed(await dlq.get(entry_id), index)

    async def requeue(self, address: str) -> str:
        _, dlq, entry_id = self._one(address)
        return await dlq.requeue(entry_id)

    async def requeue_all(self, *, task: str | None = None) -> list[str]:
        return [job for _, dlq in await self._each() for job in await dlq.requeue_all(task=task)]

    async def purge(self, *, older_than_s: float | None = None) -> int:
        return sum([await dlq.purge(older_than_s=older_than_s) for _, dlq in await self._each()])


async def _partition_tagged(
    records: AsyncIterator[HistoryRecord], index: int
) -> AsyncIterator[HistoryRecord]:
    async for record in records:
        record.partition = index
        yield record


async def _tagged(letters: AsyncIterator[DeadLetter], index: int) -> AsyncIterator[DeadLetter]:
    async for letter in letters:
        yield _addressed(letter, index)


def _id_key(entry_id: str) -> tuple[int, int]:
    """An entry id's (ms, seq), whether addressed (``p/ID``) or not."""
    return entry_key(entry_id.rpartition("/")[2])


async def merge_sorted(
    sources: list[AsyncIterator[T]], key: Callable[[T], Any]
) -> AsyncIterator[T]:
    """Merge sorted async iterators into one sorted stream (ties: source order)."""
    heap: list[tuple[Any, int, T]] = []
    for number, source in enumerate(sources):
        first = await anext(source, None)
        if first is not None:
            heapq.heappush(heap, (key(first), number, first))
    while heap:
        _, number, item = heapq.heappop(heap)
        yield item
        following = await anext(sources[number], None)
        if following is not None:
            heapq.heappush(heap, (key(following), number, following))


# -- replay -------------------------------------------------------------------------------


REORDER_MS = 250
"""How long ``AllReplay.follow`` holds a live event to put it in id order with the
events of partitions that are read later."""


class AllReplay:
    """``streamq.replay.Replay`` over every partition: records merged by time, each
    tagged with its partition (``HistoryRecord.partition``)."""

    def __init__(self, app: App, replays: list[Replay]) -> None:
        self.app = app
        self.replays = replays

    @classmethod
    async def of(cls, app: App) -> AllReplay:
        return cls(app, [Replay(view) for view in await all_partitions(app)])

    def _merged(self, pick: Callable[[Replay], AsyncIterator[HistoryRecord]]) -> Any:
        sources = [_partition_tagged(pick(r), r.app.partition_index) for r in self.replays]
        return merge_sorted(sources, key=_record_key)

    async def redrive(self, records: Sequence[HistoryRecord], into: str | None = None) -> list[str]:
        """``Replay.redrive`` with each job back into the partition its record came
        from (so a ``partition_by`` key keeps its partition); ids in record order.
        ``into`` another queue: its partition 0 (its workers read every partition)."""
        if into is not None and into != self.app.name:
            return await self.replays[0].redrive(records, into)
        groups: dict[int, list[int]] = {}
        for position, record in enumerate(records):
            groups.setdefault(record.partition, []).append(position)
        ids: list[str] = [""] * len(records)
        for index, positions in groups.items():
            history = Replay(self.app.root.partition(index), self.replays[0].archive)
            made = await history.redrive([records[p] for p in positions])
            for position, job_id in zip(positions, made, strict=True):
                ids[position] = job_id
        return ids

    async def follow(
        self, emit: Callable[[HistoryRecord], None], *, after: str = "$",
        task: str | None = None, kinds: Iterable[str] | None = None, job: str | None = None,
        block_ms: int = 1000, window_ms: int = REORDER_MS,
    ) -> None:  # fmt: skip
        """Call ``emit`` with each new event of every partition, until cancelled.

        One blocking XREAD per partition, each on its own held connection (on a
        cluster, to the partition's master). Events are emitted in id (server
        time) order: an event waits until every partition has delivered a newer
        one, or for at most ``window_ms``. So the order is exact for events more
        than ``window_ms`` apart (and for a busy queue); an event whose partition
        was read more than ``window_ms`` late can follow newer events of other
        partitions. ``after``: an entry id (exclusive, in every partition) or
        ``$`` (from now).
        """
        from streamq.connection import held
        from streamq.records import record_of

        wanted = set(kinds) if kinds else None
        views = [r.app for r in self.replays]
        seen: list[tuple[int, int]] = [(0, 0)] * len(views)
        starts: list[str] = []
        for view in views:
            start = after
            if after == "$":
                redis = await view.redis()
                top = cast(list[Any], await redis.xrevrange(view.keys.events, "+", "-", count=1))
                start = top[0][0].decode() if top else "0-0"
            starts.append(start)
            seen[len(starts) - 1] = _id_key(start)
        send: MemoryObjectSendStream[tuple[int, list[HistoryRecord], tuple[int, int]]]
        send, receive = anyio.create_memory_object_stream(max_buffer_size=len(views) * 4)

        async def read(index: int, view: App) -> None:
            last = starts[index]
            # A blocking read holds a connection; cancelled is how follow ends.
            async with held(await view.node_redis()) as one:
                while True:
                    reply = cast(
                        list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
                        await one.xread({view.keys.events: last}, count=1000, block=block_ms),
                    )
                    batch: list[HistoryRecord] = []
                    for _stream, entries in reply or ():
                        for entry_id, raw in entries:
                            last = entry_id.decode()
                            record = record_of("event", entry_id, raw)
                            record.partition = index
                            if (task is None or record.task == task) and (
                                job is None or record.job_id == job
                            ) and (wanted is None or record.kind in wanted):  # fmt: skip
                                batch.append(record)
                    if reply:
                        await send.send((index, batch, _id_key(last)))

        with send, receive:
            await self._merge_live(views, read, receive, seen, emit, window_ms)

    @staticmethod
    async def _merge_live(
        views: list[App],
        read: Callable[[int, App], Any],
        receive: MemoryObjectReceiveStream[tuple[int, list[HistoryRecord], tuple[int, int]]],
        seen: list[tuple[int, int]],
        emit: Callable[[HistoryRecord], None],
        window_ms: int,
    ) -> None:
        """Run the readers; emit what they deliver in id order (see ``follow``)."""
        held: list[tuple[tuple[int, int], int, int, float, HistoryRecord]] = []
        arrivals = 0
        async with anyio.create_task_group() as tg:
            for index, view in enumerate(views):
                tg.start_soon(read, index, view)
            while True:
                wait_s = None
                if held:
                    wait_s = max(0.0, held[0][3] + window_ms / 1000 - anyio.current_time())
                with anyio.move_on_after(wait_s):
                    source, records, newest = await receive.receive()
                    seen[source] = newest
                    now = anyio.current_time()
                    for record in records:
                        arrivals += 1
                        heapq.heappush(held, (_record_key(record), source, arrivals, now, record))
                now = anyio.current_time()
                while held and (held[0][3] + window_ms / 1000 <= now or min(seen) >= held[0][0]):
                    emit(heapq.heappop(held)[4])

    def events(self, **options: Any) -> AsyncIterator[HistoryRecord]:
        return self._merged(lambda r: r.events(**options))  # type: ignore[no-any-return]

    def messages(self, **options: Any) -> AsyncIterator[HistoryRecord]:
        return self._merged(lambda r: r.messages(**options))  # type: ignore[no-any-return]

    def dead(self, **options: Any) -> AsyncIterator[HistoryRecord]:
        return self._merged(lambda r: r.dead(**options))  # type: ignore[no-any-return]

    async def story(self, job_id: str) -> list[HistoryRecord]:
        index = (await locate(self.app, [job_id]))[job_id] or 0
        return await self.replays[min(index, len(self.replays) - 1)].story(job_id)


def _record_key(record: HistoryRecord) -> tuple[int, int]:
    return _id_key(record.id)


# -- emptying -----------------------------------------------------------------------------


async def empty_all(app: App, *, task: str | None = None) -> int:
    """``streamq.cancel.empty_queue`` in every partition; how many jobs were removed."""
    from streamq.cancel import empty_queue

    return sum([await empty_queue(view, task=task) for view in await all_partitions(app)])
