"""The demo's counters: one consistent picture of where every job is, from Redis.

Everything is read in ONE MULTI transaction, so no job moves between two
reads and the balance ``enqueued = succeeded + dead + waiting + in flight``
holds in every snapshot, whatever process died when:

- enqueued, succeeded, retried, reclaimed: counts of those events in the
  queue's events stream, tallied incrementally (each snapshot reads only the
  events after the last one it saw, inside the same transaction);
- waiting: the entries not yet delivered in each priority stream (the group's
  ``lag``) plus the delayed set (retries waiting for their backoff);
- in flight: the group's pending entries (PEL) on every stream, including the
  ones held by hung or dead workers;
- dead: the DLQ's length (a DLQ requeue moves a job back to waiting, and the
  balance still holds);
- hung: the count the worker processes record just before they freeze.

Each script that moves a job writes its event in the same script (DESIGN.md
invariant 4), which is what makes the event counts line up with the keys.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

from streamq.app import App
from streamq.keys import GROUP

CATCH_UP_PAGE = 5000
RECENT = 20


@dataclass(frozen=True, slots=True)
class Event:
    id: bytes
    ms: int
    kind: str
    job: str
    task: str
    attempt: int
    worker: str | None


@dataclass
class Tally:
    """Event counts so far and the last event read; a ring of recent events per kind."""

    last_id: bytes = b"0-0"
    enqueued: int = 0
    succeeded: int = 0
    retried: int = 0
    reclaimed: int = 0
    recent: dict[str, deque[Event]] = field(default_factory=dict)
    priority_of: dict[str, str] = field(default_factory=dict)

    def add(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
            self.last_id = entry_id
            kind = fields.get(b"kind", b"").decode()
            job = fields.get(b"job", b"").decode()
            if kind in ("enqueued", "scheduled"):
                self.enqueued += 1
                priority = fields.get(b"priority")
                if priority:
                    self.priority_of[job] = priority.decode()
                    if len(self.priority_of) > 50_000:
                        del self.priority_of[next(iter(self.priority_of))]
            elif kind == "succeeded":
                self.succeeded += 1
            elif kind == "retried":
                self.retried += 1
            elif kind == "reclaimed":
                self.reclaimed += 1
            if kind in ("succeeded", "failed", "dead", "reclaimed", "retried"):
                worker = fields.get(b"worker")
                event = Event(
                    entry_id,
                    int(entry_id.split(b"-")[0]),
                    kind,
                    job,
                    fields.get(b"task", b"").decode(),
                    int(fields.get(b"attempt", b"0") or 0),
                    worker.decode() if worker else None,
                )
                self.recent.setdefault(kind, deque(maxlen=RECENT)).append(event)


@dataclass(frozen=True, slots=True)
class Reading:
    """One transaction's view of the queue."""

    now_ms: int
    waiting: int
    in_flight: int
    dead: int
    hung: int
    state: dict[str, str]
    """The ``demo:state`` hash: ``hung:<consumer>`` marks, ``ready:<consumer>`` pids."""
    consumers: dict[str, int]
    """Pending entries per consumer, over every stream."""
    last_delivered: dict[str, bytes]
    """Per stream: the group's last delivered id (what is after it waits)."""


def _streams(app: App) -> list[str]:
    return [app.keys.stream(p) for p in app.settings.priorities]


async def catch_up(redis: Redis, app: App, tally: Tally) -> None:
    """Tally a long backlog of events in pages, so the transaction reads only a short tail."""
    while True:
        page = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrange(
                app.keys.events, min=b"(" + tally.last_id, max="+", count=CATCH_UP_PAGE
            ),
        )
        tally.add(page)
        if len(page) < CATCH_UP_PAGE:
            return


async def read(redis: Redis, app: App, tally: Tally) -> Reading:
    """One MULTI: the server's time, the new events, the group and key sizes."""
    await catch_up(redis, app, tally)
    streams = _streams(app)
    keys = app.keys
    async with redis.pipeline(transaction=True) as pipe:
        pipe.time()
        pipe.xrange(keys.events, min=b"(" + tally.last_id, max="+")
        for stream in streams:
            pipe.xinfo_groups(stream)
        for stream in streams:
            pipe.xinfo_consumers(stream, GROUP)
        pipe.zcard(keys.delayed)
        pipe.xlen(keys.dlq)
        pipe.hgetall(keys.demo("state"))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    (seconds, micros), events, *rest = replies
    groups, consumers_info = rest[: len(streams)], rest[len(streams) : 2 * len(streams)]
    delayed, dlq, state_raw = rest[2 * len(streams) :]
    tally.add(events)
    waiting, in_flight = int(delayed), 0
    last_delivered: dict[str, bytes] = {}
    for stream, info in zip(streams, groups, strict=True):
        group = _our_group(info)
        if group is None:
            continue
        # lag: entries added after the group's last delivered one (known while
        # nothing after that position was deleted; the demo never deletes).
        waiting += int(group.get("lag") or 0)
        in_flight += int(group.get("pending") or 0)
        last_delivered[stream] = _bytes(group.get("last-delivered-id", b"0-0"))
    consumers: dict[str, int] = {}
    for info in consumers_info:
        if isinstance(info, Exception):
            continue
        for consumer in info:
            name = _bytes(consumer["name"]).decode()
            consumers[name] = consumers.get(name, 0) + int(consumer["pending"])
    state = {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], state_raw or {}).items()}
    return Reading(
        now_ms=int(seconds) * 1000 + int(micros) // 1000,
        waiting=waiting,
        in_flight=in_flight,
        dead=int(dlq),
        hung=int(state.get("hung", 0)),
        state=state,
        consumers=consumers,
        last_delivered=last_delivered,
    )


def _our_group(info: Any) -> dict[str, Any] | None:
    if isinstance(info, Exception):  # no stream yet: nothing waits there
        return None
    for group in info:
        if _bytes(group["name"]) == GROUP.encode():
            return cast(dict[str, Any], group)
    return None


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
