"""A worker over several partitions of its queue (``streamq.partitions``).

Each assigned partition is a ``Lane``: its App view, a fetcher on its own
held connection (a blocking read holds one), a heartbeat, an outcome writer
on its own held connection (one script call covers one slot), a limiter, a
cancel watcher, a burst check and, optionally, a janitor. The worker keeps
one capacity over all lanes and finds a message's lane by its stream key.

``MultiFetcher`` gives the worker's fetch loop the ``Fetcher`` interface over
the lanes:

- ``fetch(free)``: the lanes are asked concurrently for shares of ``free``
  (a rotating start spreads the remainder), then, while capacity is left,
  the lanes that filled their share are asked again one by one; what they
  return is merged by priority, so within a fetch higher priorities run
  first whatever their partition. Never more than ``free`` in all.
- ``wait(free)``: one blocking read per lane, concurrently; the first that
  returns messages cancels the others. A cancelled blocking read may have
  been served by the server already (its entries are then in this
  consumer's PEL, unseen): those lanes are marked *suspect*, and the next
  ``fetch``/``wait`` first reads this consumer's own pending entries newer
  than the last one it handed out on each of their streams (``drain.lua``
  from that id, with the delivery counts from Redis). Nothing is stranded;
  such a message counts one extra delivery, as after a crash. Idle lanes
  add no latency: every lane's read blocks for the whole block time.
- ``drain`` and ``reclaim`` run per lane (the reclaim internals are the
  Fetcher's); reclaimed messages are merged by priority.

A worker not limited to ``partitions=[...]`` re-reads the queue's high-water
mark every janitor interval (one ZSCORE, ``grow_lanes``): when producers
raised the partition count, it starts lanes for the new partitions without a
restart (their connections, services and writer join the running worker's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from redis.exceptions import RedisError

from streamq.archive.format import id_key
from streamq.errors import ConfigError
from streamq.keys import GROUP
from streamq.settings import MAX_PARTITIONS
from streamq.worker.fetch import Fetcher, Message

if TYPE_CHECKING:
    from streamq.app import App
    from streamq.janitor import Janitor
    from streamq.worker import Worker
    from streamq.worker.burst import BurstCheck
    from streamq.worker.cancel import CancelWatcher
    from streamq.worker.children import ChildRelease
    from streamq.worker.heartbeat import Heartbeat
    from streamq.worker.limited import Limiter
    from streamq.worker.outcome import OutcomeWriter
    from streamq.worker.soon import SoonDue


def parse_assignment(text: str) -> tuple[int, ...]:
    """``"0,2-5"`` -> (0, 2, 3, 4, 5): the CLI's ``--partitions``."""
    indexes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ConfigError(
                f"--partitions takes numbers and ranges like 0,2-5, got {text!r}"
            ) from None
        if first > last:
            raise ConfigError(f"--partitions range {part!r} runs backwards")
        indexes += range(first, last + 1)
    return check_assignment(indexes)


def check_assignment(indexes: Sequence[int]) -> tuple[int, ...]:
    """Distinct partition numbers, sorted; ConfigError for an empty or bad list."""
    if isinstance(indexes, str | bytes) or not indexes:
        raise ConfigError("partitions must list at least one partition number")
    for index in indexes:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_PARTITIONS:
            raise ConfigError(
                f"a partition number is from 0 to {MAX_PARTITIONS - 1}, got {index!r}"
            )
    return tuple(sorted(set(indexes)))


async def assigned(app: App, requested: Sequence[int] | None) -> list[App]:
    """The partitions a worker reads: the requested ones, or all it must cover
    (max of the configured count and the queue's high-water mark)."""
    from streamq.partitions import covered

    count = await covered(app)
    if requested is None:
        return [app.partition(i) for i in range(count)]
    return [app.partition(i) for i in requested]


@dataclass(slots=True, eq=False)
class Lane:
    """One partition's share of a worker."""

    app: App
    fetcher: Fetcher
    heartbeat: Heartbeat
    writer: OutcomeWriter
    limits: Limiter
    cancels: CancelWatcher
    burst: BurstCheck
    janitor: Janitor | None
    soon: SoonDue
    children: ChildRelease


def _shares(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class MultiFetcher:
    """The ``Fetcher`` interface over several lanes (see the module docstring)."""

    def __init__(self, lanes: Sequence[Lane], priorities: Sequence[str], consumer: str) -> None:
        self._fetchers = [lane.fetcher for lane in lanes]
        self._lanes = list(lanes)
        self._consumer = consumer
        self.streams = [s for f in self._fetchers for s in f.streams]
        rank = {p: i for i, p in enumerate(priorities)}
        self._rank = {
            stream: rank[priority]
            for f in self._fetchers
            for stream, priority in zip(f.streams, priorities, strict=True)
        }
        self._start = 0
        self._last: dict[str, bytes] = {}  # per stream: the newest id handed out
        self._suspects: set[int] = set()  # lanes whose blocking read was cancelled

    @property
    def min_visibility_s(self) -> float:
        return min(f.min_visibility_s for f in self._fetchers)

    @property
    def draining(self) -> bool:
        return any(f.draining for f in self._fetchers)

    async def ensure_groups(self) -> None:
        for fetcher in self._fetchers:
            await fetcher.ensure_groups()

    def add(self, lanes: Sequence[Lane], priorities: Sequence[str]) -> None:
        """Read these lanes too, from the next fetch or wait on."""
        rank = {p: i for i, p in enumerate(priorities)}
        for lane in lanes:
            self._fetchers.append(lane.fetcher)
            self._lanes.append(lane)
            self.streams += lane.fetcher.streams
            for stream, priority in zip(lane.fetcher.streams, priorities, strict=True):
                self._rank[stream] = rank[priority]

    def _rotation(self) -> list[int]:
        n = len(self._fetchers)
        start, self._start = self._start % n, self._start + 1
        return [(start + i) % n for i in range(n)]

    def _handed(self, messages: list[Message]) -> list[Message]:
        """Note the newest id handed out per stream; merge by priority."""
        last = self._last
        for m in messages:
            seen = last.get(m.stream)
            if seen is None or id_key(m.msg_id) > id_key(seen):
                last[m.stream] = m.msg_id
        messages.sort(key=lambda m: self._rank[m.stream])  # stable: partitions keep order
        return messages

    async def drain(self, count: int) -> list[Message]:
        for fetcher in self._fetchers:
            if fetcher.draining:
                got = await fetcher.drain(count)
                if got:
                    return self._handed(got)
        return []

    async def reclaim(self, count: int) -> list[Message]:
        messages: list[Message] = []
        for i in self._rotation():
            # Every lane, even with no room left: a lane's turn to scan its pending
            # lists for the other workers must not wait for this one's free slots.
            messages += await self._fetchers[i].reclaim(max(0, count - len(messages)))
        return self._handed(messages)

    async def _recover(self, count: int) -> list[Message]:
        """This consumer's own entries that a cancelled blocking read delivered
        unseen: pending entries newer than the last id handed out per stream."""
        messages: list[Message] = []
        for i in sorted(self._suspects):
            if len(messages) >= count:
                break
            lane = self._lanes[i]
            streams = lane.fetcher.streams
            starts: list[bytes | str] = [self._last.get(s, "0") for s in streams]
            scripts = await lane.app.scripts()
            wanted = count - len(messages)
            got = await scripts.drain(streams, GROUP, self._consumer, wanted, starts)
            priority_of = dict(zip(streams, lane.app.settings.priorities, strict=True))
            messages += [
                Message(streams[index], priority_of[streams[index]], msg_id, fields, deliveries)
                for index, msg_id, fields, deliveries in got
            ]
            if len(got) < wanted:
                self._suspects.discard(i)
        return messages

    async def fetch(self, count: int) -> list[Message]:
        messages: list[Message] = []
        if self._suspects:
            messages = await self._recover(count)
        left = count - len(messages)
        if left <= 0:
            return self._handed(messages)
        order = self._rotation()
        shares = _shares(left, len(order))
        got: dict[int, list[Message]] = {}

        async def one(i: int, share: int) -> None:
            got[i] = await self._fetchers[i].fetch(share)

        async with anyio.create_task_group() as tg:
            for i, share in zip(order, shares, strict=True):
                if share:
                    tg.start_soon(one, i, share)
        for i in order:
            messages += got.get(i, [])
        left = count - len(messages)
        # Lanes that filled their share (or were not asked) may hold more.
        for i, share in zip(order, shares, strict=True):
            if left <= 0:
                break
            if len(got.get(i, [])) < share:
                continue
            more = await self._fetchers[i].fetch(left)
            messages += more
            left -= len(more)
        return self._handed(messages)

    async def wait(self, free: int, max_block_ms: int | None = None) -> tuple[list[Message], bool]:
        if self._suspects:
            recovered = await self._recover(free)
            if recovered:
                return self._handed(recovered), True
        order = self._rotation()
        shares = [max(1, s) for s in _shares(free, len(order))]
        results: dict[int, tuple[list[Message], bool]] = {}
        pending = set(order)

        async def one(i: int, share: int, scope: anyio.CancelScope) -> None:
            reply = await self._fetchers[i].wait(share, max_block_ms)
            results[i] = reply
            pending.discard(i)
            if reply[0]:
                scope.cancel()

        async with anyio.create_task_group() as tg:
            for i, share in zip(order, shares, strict=True):
                tg.start_soon(one, i, share, tg.cancel_scope)
        # A read cancelled mid-flight may have had entries delivered: recover them next.
        if any(messages for messages, _ in results.values()):
            self._suspects |= pending
        messages = [m for i in order for m in results.get(i, ([], False))[0]]
        more = bool(self._suspects) or any(m for _, m in results.values())
        return self._handed(messages), more


def lanes_by_stream(lanes: Sequence[Lane]) -> dict[str, Lane]:
    """Each stream key's lane, for finding a message's partition."""
    return {stream: lane for lane in lanes for stream in lane.fetcher.streams}


async def grow_lanes(worker: Worker) -> None:
    """Every janitor interval, read the partition count to cover (one ZSCORE) and
    start lanes for partitions the worker does not read yet."""
    from streamq.partitions import covered

    interval_s = worker.app.settings.janitor_interval_s
    while not worker.stopping:
        await anyio.sleep(interval_s)
        try:
            count = await covered(worker.app)
        except RedisError as exc:
            worker._log.warning("reading the partition count failed", error=str(exc))
            continue
        have = {lane.app.partition_index for lane in worker._lanes.values()}
        new = [i for i in range(count) if i not in have]
        if new and not worker.stopping:
            await add_lanes(worker, new)


async def start_services(services: anyio.abc.TaskGroup, lane: Lane) -> None:
    """A lane's background tasks (its writer runs in the worker's recording group)."""
    services.start_soon(lane.heartbeat.run)
    services.start_soon(lane.limits.run)
    services.start_soon(lane.cancels.run)
    services.start_soon(lane.soon.run)
    services.start_soon(lane.children.run)
    if lane.janitor is not None:
        await services.start(lane.janitor.run)


async def add_lanes(worker: Worker, indexes: Sequence[int]) -> None:
    """Start lanes for these partitions in the running worker: connections, groups,
    services and writers first, then the fetch loop reads them."""
    app = worker.app
    lanes = [await worker._open_lane(app.partition(index)) for index in indexes]
    for lane in lanes:
        await lane.fetcher.ensure_groups()
        worker._recording.start_soon(lane.writer.run)
        await start_services(worker._services, lane)
    every = [*dict.fromkeys(worker._lanes.values()), *lanes]
    worker._lanes = lanes_by_stream(every)  # before the fetcher hands out their messages
    fetcher = worker._fetcher
    if isinstance(fetcher, MultiFetcher):
        fetcher.add(lanes, app.settings.priorities)
    else:
        worker._fetcher = MultiFetcher(every, app.settings.priorities, worker.consumer)
    worker._log.info("partitions added", partitions=list(indexes), reading=len(every))
