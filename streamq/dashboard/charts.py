"""Throughput and failure rate over the last hour, per minute, from the events stream.

A busy queue writes a million events an hour, so nothing here reads a whole
range: each minute is one ``XRANGE … COUNT SAMPLE``. A minute with fewer
events than that is counted exactly; a fuller one is extrapolated from the
time its first ``SAMPLE`` events span (and marked estimated). A minute that
has passed never changes, so its counts are cached: a refresh reads only the
current minute (and any not seen yet). The first view of an hour costs at most
60 × SAMPLE entries, every later one at most SAMPLE.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

BUCKET_MS = 60_000
BUCKETS = 60
SAMPLE = 400
"""Events read per minute at most."""
SETTLED_MS = 2_000
"""A minute that ended this long ago takes no more events (ids come from the server clock)."""
_KINDS = ("succeeded", "failed", "dead", "retried")


@dataclass(frozen=True, slots=True)
class Bucket:
    start_ms: int
    succeeded: float
    failed: float
    """Failed for good, dead included."""
    retried: float
    estimated: bool

    @property
    def finished(self) -> float:
        return self.succeeded + self.failed

    @property
    def failure_rate(self) -> float | None:
        """Failed over finished; None for a minute where nothing finished."""
        return self.failed / self.finished if self.finished else None


class BucketCache:
    """Settled minutes' counts per events stream (bounded: two hours per stream)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, int], Bucket] = {}

    async def last_hour(self, redis: Redis, events_key: str, now_ms: int) -> list[Bucket]:
        """The last ``BUCKETS`` minutes, oldest first, the current one included."""
        current = now_ms - now_ms % BUCKET_MS
        starts = [current - i * BUCKET_MS for i in range(BUCKETS - 1, -1, -1)]
        found = {s: b for s in starts if (b := self._buckets.get((events_key, s))) is not None}
        wanted = [s for s in starts if s not in found]
        if wanted:
            async with redis.pipeline(transaction=False) as pipe:
                for start in wanted:
                    pipe.xrange(events_key, f"{start}-0", str(start + BUCKET_MS - 1), count=SAMPLE)
                pages = cast(list[list[tuple[bytes, dict[bytes, bytes]]]], await pipe.execute())
            for start, page in zip(wanted, pages, strict=True):
                found[start] = bucket = _count(start, page, min(now_ms, start + BUCKET_MS))
                if start + BUCKET_MS + SETTLED_MS <= now_ms:
                    self._buckets[(events_key, start)] = bucket
        self._evict(starts[0] - BUCKETS * BUCKET_MS)
        return [found[s] for s in starts]

    def _evict(self, before_ms: int) -> None:
        for key in [k for k in self._buckets if k[1] < before_ms]:
            del self._buckets[key]


def _count(start_ms: int, page: list[tuple[bytes, dict[bytes, bytes]]], end_ms: int) -> Bucket:
    counts = dict.fromkeys(_KINDS, 0)
    for _entry_id, fields in page:
        kind = fields.get(b"kind", b"").decode(errors="replace")
        if kind in counts:
            counts[kind] += 1
    scale = 1.0
    estimated = len(page) >= SAMPLE
    if estimated:
        last_ms = int(page[-1][0].split(b"-", 1)[0])
        covered = max(1, last_ms - start_ms + 1)
        scale = max(1.0, (end_ms - start_ms) / covered)
    return Bucket(
        start_ms,
        succeeded=counts["succeeded"] * scale,
        failed=(counts["failed"] + counts["dead"]) * scale,
        retried=counts["retried"] * scale,
        estimated=estimated,
    )


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    height: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Geometry for an inline SVG (the template draws it; no script, no library)."""

    width: int
    height: int
    bars: list[Bar]
    fail_bars: list[Bar]
    rate_points: str
    """The failure-rate polyline's points."""
    peak_per_min: float
    total_finished: float
    total_failed: float
    estimated: bool


def chart_of(buckets: list[Bucket], width: int = 600, height: int = 120) -> Chart:
    peak = max((b.finished for b in buckets), default=0.0) or 1.0
    step = width / max(1, len(buckets))
    bars, fail_bars, points = [], [], []
    for i, bucket in enumerate(buckets):
        x = i * step
        h = bucket.finished / peak * (height - 4)
        fh = bucket.failed / peak * (height - 4)
        minute = _hhmm(bucket.start_ms)
        approx = "~" if bucket.estimated else ""
        bars.append(Bar(x, height - h, h, f"{minute}: {approx}{bucket.finished:.0f} finished"))
        fail_bars.append(Bar(x, height - fh, fh, f"{minute}: {approx}{bucket.failed:.0f} failed"))
        rate = bucket.failure_rate
        if rate is not None:
            points.append(f"{x + step / 2:.1f},{height - rate * (height - 4):.1f}")
    return Chart(
        width, height, bars, fail_bars, " ".join(points),
        max((b.finished for b in buckets), default=0.0),
        sum(b.finished for b in buckets), sum(b.failed for b in buckets),
        any(b.estimated for b in buckets),
    )  # fmt: skip


def _hhmm(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%H:%M")
