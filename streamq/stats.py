"""Queue statistics: one snapshot of a queue's streams, group, delayed set and DLQ.

``collect(app)`` reads everything in one pipelined round trip (a second one
only when the server cannot tell a group's lag). Ages are measured against
the server's clock (TIME), because stream ids carry the server's milliseconds,
not the caller's. A queue that was never used has no streams or group yet:
that reads as zeros, not as an error.

The history streams (each priority stream, the events stream, the DLQ) are
also read for how far back they reach (their oldest entry), and what memory
they take (MEMORY USAGE, an estimate from a few sampled nodes; unknown where
an ACL denies MEMORY). A count cap that trims a stream before ``retention_s``
would is a warning: the history promised is not there. ``read_history`` is
the same read on its own, for ``doctor``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from streamq.app import App
from streamq.keys import GROUP, Keyspace
from streamq.settings import Settings

THROUGHPUT_WINDOW_S = 60.0
EVENTS_READ_MAX = 10_000
"""Events read per snapshot at most; past it the window shrinks to what was read."""
FINAL_KINDS = ("succeeded", "failed", "dead")
"""Event kinds that end a job; their rate is the queue's throughput."""
COUNTED_KINDS = (*FINAL_KINDS, "retried")
MEMORY_SAMPLES = 10
"""Stream nodes MEMORY USAGE samples and extrapolates from: a fixed cost, however
long the stream (SAMPLES 0 would walk all of it)."""


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
class HistoryStats:
    """One history stream: what it keeps, how far back that reaches, what it weighs."""

    kind: str
    """``priority``, ``events`` or ``dlq``."""
    name: str
    """The priority's name, or ``events`` or ``dlq``."""
    stream: str
    length: int
    oldest_ms: int | None
    """When its oldest entry was added (server clock, ms since the epoch); None: empty."""
    reach_s: float | None
    """How far back the history reaches: the age of its oldest entry."""
    memory_bytes: int | None
    """MEMORY USAGE's estimate (sampled); None when the server would not tell."""
    cap: int | None
    """The count cap that trims this stream (None: only age trims it, or nothing)."""
    cap_setting: str | None
    """The setting ``cap`` comes from: ``retention_maxlen`` or ``events_maxlen``."""
    retention_s: float | None
    """How far back the history is meant to reach (None: kept until trimmed by hand,
    as the DLQ always is)."""

    @property
    def cut_short(self) -> bool:
        """The cap, not ``retention_s``, decides how far back this stream reaches.

        Trimming to a cap (``MAXLEN ~``, or the janitor's cut and ``MINID ~``)
        keeps at least the cap, so a stream the cap trimmed holds about the cap:
        a stream that holds that many while its oldest entry is younger than
        ``retention_s`` lost history that retention promised.
        """
        if self.cap is None or self.retention_s is None or self.reach_s is None:
            return False
        return self.length >= self.cap - self.cap // 100 and self.reach_s < self.retention_s

    @property
    def shortfall(self) -> str | None:
        """When the cap cut this stream short: how far back it reaches against what
        ``retention_s`` promised, and what keeping that would take at this rate."""
        if not self.cut_short:
            return None
        assert self.reach_s is not None and self.retention_s is not None
        scale = self.retention_s / max(self.reach_s, 0.001)
        need = f"~{_count(round(self.length * scale))} entries"
        if self.memory_bytes is not None:
            need += f", ~{format_bytes(round(self.memory_bytes * scale))}"
        promised = format_duration(self.retention_s)
        return (
            f"{self.name}: cut by {self.cap_setting} {self.cap}: reaches back "
            f"{format_duration(self.reach_s)}, not retention_s's {promised} "
            f"({promised} at this rate: {need})"
        )

    @property
    def warning(self) -> str | None:
        """The shortfall with its fix."""
        shortfall = self.shortfall
        if shortfall is None:
            return None
        return f"{shortfall}; raise {self.cap_setting} or set it to None"


@dataclass(frozen=True, slots=True)
class History:
    """The history streams of a queue: priority streams (highest first), events, DLQ."""

    streams: tuple[HistoryStats, ...]

    @property
    def memory_bytes(self) -> int | None:
        """All of them together; None when any one is unknown."""
        sizes = [h.memory_bytes for h in self.streams]
        return None if None in sizes else sum(s or 0 for s in sizes)

    @property
    def retained_jobs(self) -> int:
        """Job messages kept in the priority streams (a retried job may count twice)."""
        return sum(h.length for h in self.streams if h.kind == "priority")

    @property
    def bytes_per_retained_job(self) -> float | None:
        """An estimate: all history memory (events and DLQ too) over the jobs retained."""
        total = self.memory_bytes
        if total is None or not self.retained_jobs:
            return None
        return total / self.retained_jobs

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(h.warning for h in self.streams if h.warning is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "streams": [
                {
                    "kind": h.kind, "name": h.name, "stream": h.stream, "length": h.length,
                    "oldest_ms": h.oldest_ms, "reach_s": h.reach_s,
                    "memory_bytes": h.memory_bytes, "cap": h.cap, "cap_setting": h.cap_setting,
                    "retention_s": h.retention_s, "cut_short": h.cut_short,
                }
                for h in self.streams
            ],
            "memory_bytes": self.memory_bytes,
            "retained_jobs": self.retained_jobs,
            "bytes_per_retained_job": self.bytes_per_retained_job,
            "warnings": list(self.warnings),
        }  # fmt: skip


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
    history: History

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
            "history": self.history.to_dict(),
        }  # fmt: skip


def _consumer_dict(c: ConsumerStats) -> dict[str, Any]:
    return {"name": c.name, "pending": c.pending, "idle_ms": c.idle_ms}


async def collect(app: App) -> QueueStats:
    """Snapshot the App's queue in one pipelined round trip (two if a lag is unknown)."""
    redis = await app.node_redis()
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
        _queue_history_reads(pipe, keys, priorities)
        replies: list[Any] = await pipe.execute(raise_on_error=False)

    now_ms = _server_ms(replies[0])
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
    history = _history(replies[rest + 3 :], keys, app.settings, now_ms)
    if unknown_lag:
        per_priority = await _estimate_lags(app, per_priority, unknown_lag)
    return QueueStats(
        queue=app.name,
        server_time_ms=now_ms,
        priorities=tuple(per_priority),
        delayed=int(delayed),
        dlq=int(dlq),
        throughput=_throughput(events, now_ms, window_start_ms),
        history=history,
    )


async def read_history(redis: Redis, keys: Keyspace, settings: Settings) -> History:
    """The history streams alone, in one pipelined round trip.

    Raises the RedisError of a read the user may not make (MEMORY excepted:
    a denied or unknown MEMORY leaves the memory unknown).
    """
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        _queue_history_reads(pipe, keys, settings.priorities)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    return _history(replies[1:], keys, settings, _server_ms(replies[0]))


def _history_streams(keys: Keyspace, priorities: Sequence[str]) -> list[tuple[str, str, str]]:
    """(kind, name, key) of each history stream, in the order shown."""
    return [
        *(("priority", priority, keys.stream(priority)) for priority in priorities),
        ("events", "events", keys.events),
        ("dlq", "dlq", keys.dlq),
    ]


_HISTORY_READS = 3
"""Replies per history stream: XLEN, its oldest entry, MEMORY USAGE."""


def _queue_history_reads(pipe: Pipeline, keys: Keyspace, priorities: Sequence[str]) -> None:
    for _kind, _name, stream in _history_streams(keys, priorities):
        pipe.xlen(stream)
        # The oldest entry's id is its time; its fields come along (no ids-only
        # read exists), but one entry only.
        pipe.xrange(stream, "-", "+", count=1)
        pipe.memory_usage(stream, samples=MEMORY_SAMPLES)


def _history(replies: list[Any], keys: Keyspace, settings: Settings, now_ms: int) -> History:
    streams = []
    for index, (kind, name, stream) in enumerate(_history_streams(keys, settings.priorities)):
        length, first, memory = replies[_HISTORY_READS * index : _HISTORY_READS * (index + 1)]
        first = _ok(first)
        oldest_ms = _id_ms(first[0][0]) if first else None
        cap, cap_setting = _cap(kind, settings)
        streams.append(
            HistoryStats(
                kind=kind,
                name=name,
                stream=stream,
                length=int(_ok(length)),
                oldest_ms=oldest_ms,
                reach_s=None if oldest_ms is None else max(0.0, (now_ms - oldest_ms) / 1000),
                memory_bytes=_memory(memory),
                cap=cap,
                cap_setting=cap_setting,
                retention_s=None if kind == "dlq" else settings.retention_s,
            )
        )
    return History(tuple(streams))


def _cap(kind: str, settings: Settings) -> tuple[int | None, str | None]:
    """The count cap that trims this history stream, and the setting it comes from.

    The janitor trims the priority streams to ``retention_maxlen`` and the events
    stream to ``events_maxlen`` (0 or None: no cap); the DLQ is never trimmed.
    """
    if kind == "dlq":
        return None, None
    setting = "events_maxlen" if kind == "events" else "retention_maxlen"
    cap = settings.events_maxlen if kind == "events" else settings.retention_maxlen
    return (cap, setting) if cap else (None, None)


def _memory(reply: Any) -> int | None:
    """MEMORY USAGE's answer; nil is a stream that does not exist (0 bytes).

    An ACL may deny MEMORY, and a managed service may rename or disable it:
    then the memory is unknown, not the whole snapshot an error.
    """
    if isinstance(reply, ResponseError):
        return None
    reply = _ok(reply)
    return 0 if reply is None else int(reply)


def _server_ms(reply: Any) -> int:
    seconds, micros = _ok(reply)
    return int(seconds) * 1000 + int(micros) // 1000


def format_duration(seconds: float) -> str:
    """``4.2s``, ``38s``, ``12.5m``, ``3.0h``, ``7.0d``: one unit, compact."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"


def format_bytes(size: float) -> str:
    """``512 B``, ``1.5 KiB``, ``12.0 MiB``: binary units, as the server counts."""
    if size < 1024:
        return f"{size:.0f} B"
    size /= 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _count(n: int) -> str:
    """``950``, ``9,500``, ``12k``, ``4.1M``, ``250M``: a count rounded for a sentence."""
    if n >= 100_000_000:
        return f"{n / 1_000_000:.0f}M"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    return f"{n:,}"


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
    redis = await app.node_redis()
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
