"""Fetching: which message this worker runs next.

In order of preference:

1. its own pending messages (``drain``), once at start: a worker restarting
   under the same consumer name finishes what it held before;
2. messages idle past their visibility timeout in any consumer's PEL
   (``reclaim``), every janitor interval: a crashed worker's jobs come back
   (one worker per stream and interval scans, all take: ``worker/reclaim.py``);
3. new messages (``fetch``), read by one script in strict priority order;
4. when all are empty, a blocking XREADGROUP on every stream (``wait``), so an
   idle worker wakes as soon as a job arrives instead of polling; the wake
   carries what arrived, and while the streams stay short the worker keeps
   blocking there (one round trip per wake, no empty ``fetch`` in between).

Delivery counts always come from Redis (DESIGN.md invariant 5).

A group destroyed under a running worker (``XGROUP DESTROY``) makes the
blocking read and the reclaim pass fail with NOGROUP, and the fetch script
report the stream: the fetcher recreates the groups and reads again. Not at
id 0: the streams keep acked entries as the audit history, and a group at 0
would run every retained job again.
The group restarts just before the oldest entry whose job is unfinished
(``restart_point``), so nothing queued or in flight is skipped either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn, cast

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, ResponseError

from streamq.keys import GROUP, Keyspace
from streamq.keytypes import is_wrong_type, queue_keys, raise_named
from streamq.logging import get_logger
from streamq.scripts import Entry, Scripts
from streamq.settings import Settings
from streamq.worker.reclaim import Reclaimer

FINAL_STATUSES = frozenset({b"succeeded", b"failed", b"dead", b"cancelled"})
RESTART_SCAN_PAGE = 1000


def missing_group(exc: ResponseError) -> bool:
    """NOGROUP: the stream or its consumer group is gone.

    Redis 7.0 ends an XREADGROUP blocked on a stream that was deleted with
    ``UNBLOCKED the stream key no longer exists`` (Valkey, Redis 7.2+: NOGROUP).
    """
    text = str(exc)
    return "NOGROUP" in text or text.startswith("UNBLOCKED the stream key no longer exists")


@dataclass(slots=True)  # not frozen: built per job, and frozen init costs
class Message:
    stream: str
    priority: str
    msg_id: bytes
    fields: dict[bytes, bytes] | None
    deliveries: int
    """Redis's delivery count for this message when this worker received it."""


class Fetcher:
    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        keys: Keyspace,
        settings: Settings,
        consumer: str,
        block_ms: int,
        visibility_ms: Mapping[str, int] | None = None,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._keys = keys
        self._settings = settings
        self._consumer = consumer
        self._block_ms = block_ms
        self.streams = [keys.stream(p) for p in settings.priorities]
        self._priority_of = dict(zip(self.streams, settings.priorities, strict=True))
        self._rank = {s: i for i, s in enumerate(self.streams)}
        self._default_vis_ms = int(settings.visibility_timeout_s * 1000)
        self._vis_ms = dict(visibility_ms or {})
        self._min_vis_ms = min([self._default_vis_ms, *self._vis_ms.values()])
        self._drain_from: list[bytes | str] | None = ["0"] * len(self.streams)
        self._log = get_logger(queue=keys.queue, worker=consumer)
        self._keys_touched = queue_keys(keys, settings.priorities)
        self.reclaimer = Reclaimer(
            scripts, keys, settings, consumer, self._default_vis_ms, self._vis_ms
        )
        for priority in settings.priorities:
            self._keys_touched += [keys.reclaim_gate(priority), keys.handout(priority)]

    @property
    def min_visibility_s(self) -> float:
        return self._min_vis_ms / 1000

    async def ensure_groups(self) -> None:
        """Create the group on every stream that lacks it.

        A new stream gets it at id 0 (not ``$``: keep jobs enqueued before the
        first worker). A stream that exists without it lost it (XGROUP DESTROY):
        the group restarts at ``restart_point``, not at 0 (the history).
        """
        try:
            await self._ensure_groups()
        except ResponseError as exc:
            await self._failed(exc)

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            start, lost = "0", False
            # Look before creating: XGROUP CREATE is refused outright at maxmemory,
            # and a worker restarted during a memory incident must still start.
            if await self._redis.exists(stream):
                groups = await self._redis.xinfo_groups(stream)
                if any(g["name"] in (GROUP, GROUP.encode()) for g in groups):
                    continue
                point = await self.restart_point(stream)
                start = point.decode() if isinstance(point, bytes) else point
                lost = True
            try:
                await self._redis.xgroup_create(stream, GROUP, id=start, mkstream=True)
            except OutOfMemoryError:
                # A new stream: the fetch script (allowed at maxmemory) creates it at 0.
                # A lost group waits for memory (the script never recreates it at 0).
                if lost:
                    self._log.warning("consumer group not recreated at maxmemory", stream=stream)
                continue
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
                continue  # another worker recreated it first
            if lost:
                self._log.warning("consumer group recreated", stream=stream, start_after=start)

    async def restart_point(self, stream: str) -> bytes | str:
        """The id to recreate a lost group at: just before the oldest unfinished entry.

        An entry is unfinished when its job hash is not final and names this
        entry as the job's current one (a retried job's earlier entries are
        history). An entry with no job hash is unfinished only while younger
        than the result TTL: older, its job finished and the hash expired;
        younger, it was never a streamq job (a hand-written or garbled
        message, which the worker sends to the DLQ). Reads the whole stream
        in pages in the worst case; it runs only after a group was destroyed.
        """
        redis = self._redis
        seconds, micros = await redis.time()
        expired_before = seconds * 1000 + micros // 1000 - int(self._settings.result_ttl_s * 1000)
        previous: bytes | str = "0"
        low: bytes | str = "-"
        while True:
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await redis.xrange(stream, min=low, max="+", count=RESTART_SCAN_PAGE),
            )
            if not page:
                return previous
            async with redis.pipeline(transaction=False) as pipe:
                for _entry_id, fields in page:
                    job = (fields or {}).get(b"id")
                    if job:
                        pipe.hmget(self._keys.job(job.decode(errors="replace")), "status", "msg_id")
                hashes = cast(list[list[bytes | None]], await pipe.execute())
            found = iter(hashes)
            for entry_id, fields in page:
                status, msg_id = next(found) if (fields or {}).get(b"id") else (None, None)
                if status is None:
                    unfinished = int(entry_id.split(b"-")[0]) >= expired_before
                else:
                    unfinished = status not in FINAL_STATUSES and msg_id == entry_id
                if unfinished:
                    return previous
                previous = entry_id
            low = b"(" + page[-1][0]

    @property
    def draining(self) -> bool:
        return self._drain_from is not None

    async def drain(self, count: int) -> list[Message]:
        """The next page of this consumer's own pending messages; [] once none are left."""
        if self._drain_from is None:
            return []
        got = await self._scripts.drain(
            self.streams, GROUP, self._consumer, count, self._drain_from
        )
        if not got:
            self._drain_from = None
            return []
        messages = []
        for index, msg_id, fields, deliveries in got:
            self._drain_from[index] = msg_id
            stream = self.streams[index]
            messages.append(Message(stream, self._priority_of[stream], msg_id, fields, deliveries))
        return messages

    async def reclaim(self, count: int) -> list[Message]:
        """Up to ``count`` messages idle past their visibility timeout, highest priority first.

        Scans a stream's PEL only when it is this worker's turn (one scanner per
        stream and interval, ``streamq.worker.reclaim``); otherwise it takes what
        the last scan handed out.
        """
        messages: list[Message] = []
        for stream in self.streams:
            priority = self._priority_of[stream]
            want = count - len(messages)
            try:
                got = await self.reclaimer.reclaim(priority, want)
            except ResponseError as exc:
                await self._recover(exc)
                got = await self.reclaimer.reclaim(priority, want)
            messages += [
                Message(stream, priority, msg_id, fields or None, deliveries)
                for msg_id, fields, deliveries, _owner in got
            ]
        return messages

    async def _recover(self, exc: ResponseError) -> None:
        """After NOGROUP, recreate the groups (the caller reads again); else raise."""
        if not missing_group(exc):
            await self._failed(exc)
        self._log.warning("consumer group missing; recreating it", error=str(exc))
        await self.ensure_groups()

    async def _failed(self, exc: ResponseError) -> NoReturn:
        """Raise ``exc``, or the WrongKeyType naming the key behind its WRONGTYPE."""
        if is_wrong_type(exc):
            await raise_named(self._redis, self._keys, self._keys_touched, exc)
        raise exc

    async def fetch(self, count: int) -> list[Message]:
        """Up to ``count`` new messages without blocking, highest priority first.

        The script creates the group only on a stream that does not exist yet
        (at id 0, also at maxmemory); a stream that lost its group comes back
        with no entries, and the groups are recreated here at the restart
        point, as on NOGROUP in ``wait``/``reclaim``, before reading again.
        """
        reply = await self._fetch(count)
        lost = [stream for stream, entries in reply if not entries]
        if not lost:
            return self._messages(reply)
        await self._recover(ResponseError(f"NOGROUP consumer group missing on {', '.join(lost)}"))
        messages = self._messages(reply)
        if len(messages) < count:
            # At maxmemory the group may still be missing: that stream waits, the rest run.
            messages = sorted(
                messages + self._messages(await self._fetch(count - len(messages))),
                key=lambda m: self._rank[m.stream],
            )
        return messages

    async def _fetch(self, count: int) -> list[tuple[str, list[Entry]]]:
        try:
            return await self._scripts.fetch(self.streams, GROUP, self._consumer, count)
        except ResponseError as exc:
            await self._failed(exc)

    async def wait(self, free: int, max_block_ms: int | None = None) -> tuple[list[Message], bool]:
        """Block until at least one stream has a new message (or the block expires).

        Returns the messages and whether more may be waiting. One XREADGROUP
        over every stream, up to ``free // streams`` each (so never more than
        ``free`` in all): at low load the wake itself carries the jobs that
        arrived, and when no stream filled its share the caller blocks again
        right away instead of spending a round trip on a ``fetch`` that finds
        nothing. A stream that filled its share may hold more: the caller then
        uses ``fetch``, which takes them in strict priority order.
        """
        share = max(1, free // len(self.streams))
        limit = self._block_ms if max_block_ms is None else max_block_ms
        block = max(1, min(self._block_ms, limit))  # 0 ms left: 1 ms, not the whole block
        try:
            reply = await self._redis.xreadgroup(
                GROUP, self._consumer, dict.fromkeys(self.streams, ">"), count=share, block=block
            )
        except ResponseError as exc:
            await self._recover(exc)
            reply = await self._redis.xreadgroup(
                GROUP, self._consumer, dict.fromkeys(self.streams, ">"), count=share, block=block
            )
        raw = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None, reply)
        entries: list[tuple[str, list[Entry]]] = [
            (key.decode(), [(mid, fields or None) for mid, fields in items])
            for key, items in (raw or [])
        ]
        more = any(len(items) >= share for _, items in entries)
        return self._messages(entries), more

    def _messages(self, reply: list[tuple[str, list[Entry]]]) -> list[Message]:
        reply.sort(key=lambda item: self._rank[item[0]])
        return [
            # Only '>' reads come through here: a first delivery has count 1.
            Message(stream, self._priority_of[stream], msg_id, fields, 1)
            for stream, entries in reply
            for msg_id, fields in entries
        ]
