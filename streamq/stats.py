"""Queue statistics: one snapshot of a queue's streams, group, delayed set and DLQ.

``collect(app)`` reads everything in one pipelined round trip (a second one
only when the server cannot tell a group's lag). Ages are measured against
the server's clock (TIME), because stream ids carry the server's milliseconds,
not the caller's. A queue that was never used has no streams or group yet:
that reads as zeros, not as an error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from streamq.app import App
from streamq.keys import GROUP

THROUGHPUT_WINDOW_S = 60.0
EVENTS_READ_MAX = 10_000
"""Events read per snapshot at most; past it the window shrinks to what was read."""
FINAL_KINDS = ("succeeded", "failed", "dead")
"""Event kinds that end a job; their rate is the queue's throughput."""
COUNTED_KINDS = (*FINAL_KINDS, "retried")


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    name: str
    pending: int
    idle_ms: int
    """Since the consumer last read or claimed (a busy worker heartbeats, so stays low)."""


@dataclass(frozen=True, slots=True)
class PriorityStats:
    priority: str
    stream: str
    length: int
    """Entries in the stream: waiting, running and acked history not yet trimmed."""
    lag: int | None
    """Entries not yet delivered to the group; None when neither the server nor an
    estimate can tell."""
    lag_estimated: bool
    """True when ``lag`` is an estimate (the server reported none: entries were
    deleted after the group's last read, so it may count deleted entries too)."""
    pending: int
    """Delivered and not yet acknowledged (running, or stuck until reclaimed)."""
    oldest_pending_age_s: float | None
    """Age of the oldest pending entry since it was added to the stream."""
    consumers: tuple[ConsumerStats, ...]


@dataclass(frozen=True, slots=True)
class Throughput:
    """Outcome events counted over the last ``window_s`` seconds."""

    window_s: float
    succeeded: int
    failed: int
    retried: int
    dead: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.dead

    @property
    def per_s(self) -> float:
        """Jobs that reached a final outcome per second."""
        return self.finished / self.window_s if self.window_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    server_time_ms: int
    priorities: tuple[PriorityStats, ...]
    """Highest priority first, as the App orders them."""
    delayed: int
    """Scheduled jobs and retries waiting for their due time."""
    dlq: int
    throughput: Throughput

    @property
    def pending(self) -> int:
        return sum(p.pending for p in self.priorities)

    @property
    def consumers(self) -> tuple[ConsumerStats, ...]:
        """Each consumer once: a worker reads every priority stream under one name."""
        merged: dict[str, ConsumerStats] = {}
        for prio in self.priorities:
            for c in prio.consumers:
                seen = merged.get(c.name, ConsumerStats(c.name, 0, c.idle_ms))
                merged[c.name] = ConsumerStats(
                    c.name, seen.pending + c.pending, min(seen.idle_ms, c.idle_ms)
                )
        return tuple(sorted(merged.values(), key=lambda c: c.name))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the derived totals a reader would otherwise recompute."""
        t = self.throughput
        return {
            "queue": self.queue,
            "server_time_ms": self.server_time_ms,
            "priorities": [
                {
                    "priority": p.priority, "stream": p.stream, "length": p.length,
                    "lag": p.lag, "lag_estimated": p.lag_estimated, "pending": p.pending,
                    "oldest_pending_age_s": p.oldest_pending_age_s,
                    "consumers": [_consumer_dict(c) for c in p.consumers],
                }
                for p in self.priorities
            ],
            "pending": self.pending,
            "delayed": self.delayed,
            "dlq": self.dlq,
            "consumers": [_consumer_dict(c) for c in self.consumers],
            "throughput": {
                "window_s": t.window_s, "succeeded": t.succeeded, "failed": t.failed,
                "retried": t.retried, "dead": t.dead, "per_s": t.per_s,
            },
        }  # fmt: skip


def _consumer_dict(c: ConsumerStats) -> dict[str, Any]:
    return {"name": c.name, "pending": c.pending, "idle_ms": c.idle_ms}


async def collect(app: App) -> QueueStats:
    """Snapshot the App's queue in one pipelined round trip (two if a lag is unknown)."""
    redis = await app.redis()
    keys = app.keys
    priorities = app.settings.priorities
    window_start_ms = int((time.time() - THROUGHPUT_WINDOW_S) * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        for priority in priorities:
            stream = keys.stream(priority)
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, GROUP)
            pipe.xinfo_consumers(stream, GROUP)
        pipe.zcard(keys.delayed)
        pipe.xlen(keys.dlq)
        pipe.xrevrange(keys.events, "+", f"{window_start_ms}-0", count=EVENTS_READ_MAX)
        replies: list[Any] = await pipe.execute(raise_on_error=False)

    seconds, micros = _ok(replies[0])
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    per_priority = []
    unknown_lag: list[tuple[int, Mapping[str, Any]]] = []
    for index, priority in enumerate(priorities):
        length, groups, pending, consumers = replies[1 + 4 * index : 5 + 4 * index]
        group = _group(_missing_as(groups, []))
        length = int(_ok(length))
        lag, estimated = _lag(group, length)
        if lag is None and group is not None:
            unknown_lag.append((index, group))
        summary = _missing_as(pending, None)
        oldest = summary.get("min") if summary and summary.get("pending") else None
        per_priority.append(
            PriorityStats(
                priority=priority,
                stream=keys.stream(priority),
                length=length,
                lag=lag,
                lag_estimated=estimated,
                pending=int(summary["pending"]) if summary else 0,
                oldest_pending_age_s=None if oldest is None else _age_s(oldest, now_ms),
                consumers=tuple(
                    ConsumerStats(_text(c["name"]), int(c["pending"]), int(c["idle"]))
                    for c in _missing_as(consumers, [])
                ),
            )
        )
    rest = 1 + 4 * len(priorities)
    delayed, dlq, events = (_ok(r) for r in replies[rest : rest + 3])
    if unknown_lag:
        per_priority = await _estimate_lags(app, per_priority, unknown_lag)
    return QueueStats(
        queue=app.name,
        server_time_ms=now_ms,
        priorities=tuple(per_priority),
        delayed=int(delayed),
        dlq=int(dlq),
        throughput=_throughput(events, now_ms, window_start_ms),
    )


def _ok(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def _missing_as(reply: Any, default: Any) -> Any:
    """A stream or group that does not exist yet is empty, not an error."""
    if isinstance(reply, ResponseError):
        message = str(reply)
        if message.startswith("NOGROUP") or "no such key" in message.lower():
            return default
    return _ok(reply)


def _group(groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    for group in groups:
        if _text(group["name"]) == GROUP:
            return group
    return None


def _lag(group: Mapping[str, Any] | None, length: int) -> tuple[int | None, bool]:
    """(lag, estimated) from XINFO GROUPS alone; (None, False) needs a second look."""
    if group is None:
        return length, False  # no group yet: every entry is still to be delivered
    if group.get("lag") is not None:
        return int(group["lag"]), False
    if _text(group["last-delivered-id"]) == "0-0":
        return length, False  # nothing read yet: every entry present is undelivered
    return None, False


async def _estimate_lags(
    app: App, per_priority: list[PriorityStats], unknown: list[tuple[int, Mapping[str, Any]]]
) -> list[PriorityStats]:
    """Fill lags the server left out, from XINFO STREAM: exact when the group has read
    up to the last id, else entries added minus entries read (an estimate: it also
    counts entries deleted after the group's position)."""
    redis = await app.redis()
    async with redis.pipeline(transaction=False) as pipe:
        for index, _group_info in unknown:
            pipe.xinfo_stream(per_priority[index].stream)
        infos: list[Any] = await pipe.execute(raise_on_error=False)
    out = list(per_priority)
    for (index, group), info in zip(unknown, infos, strict=True):
        stream_info = _missing_as(info, None)
        if stream_info is None:
            continue
        lag: int | None = None
        estimated = False
        if _text(group["last-delivered-id"]) == _text(stream_info["last-generated-id"]):
            lag = 0
        elif group.get("entries-read") is not None and "entries-added" in stream_info:
            lag = max(0, int(stream_info["entries-added"]) - int(group["entries-read"]))
            estimated = True
        prio = out[index]
        out[index] = PriorityStats(
            prio.priority, prio.stream, prio.length, lag, estimated, prio.pending,
            prio.oldest_pending_age_s, prio.consumers,
        )  # fmt: skip
    return out


def _throughput(events: list[Any], now_ms: int, window_start_ms: int) -> Throughput:
    counts = dict.fromkeys(COUNTED_KINDS, 0)
    for _entry_id, fields in events:
        kind = _text(fields.get(b"kind", b""))
        if kind in counts:
            counts[kind] += 1
    start_ms = window_start_ms
    if len(events) >= EVENTS_READ_MAX:
        # Read newest first and stopped at the cap: the counts cover only back to here.
        start_ms = _id_ms(events[-1][0])
    return Throughput(
        window_s=max(0.001, (now_ms - start_ms) / 1000),
        succeeded=counts["succeeded"],
        failed=counts["failed"],
        retried=counts["retried"],
        dead=counts["dead"],
    )


def _id_ms(entry_id: bytes | str) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def _age_s(entry_id: bytes | str, now_ms: int) -> float:
    return max(0.0, (now_ms - _id_ms(entry_id)) / 1000)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
