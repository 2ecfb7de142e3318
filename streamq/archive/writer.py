"""Export: stream entries after the archive's watermark → new segments.

One export call reads the stream with XRANGE from just after the watermark
up to a bound, in pages, and writes one segment per time window it meets
(at most ``max_entries`` entries per call, so a call is bounded in memory
and time; call again while ``done`` is False). Each segment is complete and
durable (fsynced, or uploaded whole) before the next one starts and before
the index is rewritten; the watermark is the highest last id of any
segment. A crash at any point therefore leaves segments that each hold a
contiguous, complete id range up to the watermark, and the next export
starts after it: entries are re-exported, never skipped. Trimming the
stream no further than the watermark (``archive_before_trim``) thus loses
nothing between the archive and Redis.

The encoding, compression and file IO run in a worker thread; only XRANGE
runs on the event loop.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import anyio.to_thread

from streamq.archive.format import (
    LAST,
    IdKey,
    Segment,
    encode_entry,
    id_key,
    id_text,
    parse_range,
    predecessor,
    segment_name,
    successor,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamq.archive.core import Archive
    from streamq.archive.store import PendingFile

PAGE = 1000
"""Entries per XRANGE call at most."""
PAGE_BYTES = 4 * 1024 * 1024
"""Pages shrink so that one holds about this many bytes of field values (big payloads)."""
COMPRESSLEVEL = 6
Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass(slots=True)
class ExportResult:
    stream: str
    entries: int = 0
    """Entries written by this call."""
    segments: list[Segment] = field(default_factory=list)
    """The segments it wrote, in id order."""
    watermark: str | None = None
    """The last id safely archived for the stream after this call (None: nothing ever)."""
    done: bool = True
    """False when ``max_entries`` stopped the call before the bound: call again."""

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments)


async def export(
    archive: Archive,
    redis: Redis,
    stream_key: str,
    until: str = "+",
    *,
    max_entries: int = 50_000,
    whole_windows: bool = False,
) -> ExportResult:
    """Archive the stream's entries after the watermark with ids up to ``until``.

    ``until`` is an XRANGE end bound: ``+``, an id, or ``(`` + an id (exclusive).
    ``whole_windows`` exports only time windows that end at or before ``until``
    (the rest of the window waits for a later call), so frequent calls still
    write one segment per window. Idempotent: a second call with the same
    bound writes nothing.
    """
    if max_entries < 1:
        raise ValueError(f"max_entries must be >= 1, got {max_entries}")
    bounds = parse_range("-", until)
    high = bounds[1] if bounds is not None else None
    if high is not None and whole_windows:
        if high == LAST:  # closed windows: those that ended before the server's now
            seconds, micros = await redis.time()
            high = (seconds * 1000 + micros // 1000, 0)
        edge = successor(high)
        limit = predecessor((edge[0] - edge[0] % archive.window_ms, 0))
        high = None if limit is None else min(high, limit)
    # The watermark this Archive saw last is never above the true one (segments
    # are only added), so when nothing lies between it and the bound, there is
    # nothing to write, and no listing is needed: a frequent caller with
    # nothing new (the janitor, most passes) costs one XRANGE, not a LIST.
    if stream_key in archive.known_watermarks:
        known = archive.known_watermarks[stream_key]
        low = successor(id_key(known)) if known else (0, 0)
        if high is None or low > high:
            return ExportResult(stream_key, watermark=known)
        if not await redis.xrange(stream_key, id_text(low), id_text(high), count=1):
            return ExportResult(stream_key, watermark=known)
    status = await anyio.to_thread.run_sync(archive.indexed, stream_key)
    archive.known_watermarks[stream_key] = status.watermark
    result = ExportResult(stream_key, watermark=status.watermark)
    low = successor(id_key(status.watermark)) if status.watermark else (0, 0)
    if high is None or low > high:
        return result
    job = _Export(archive, stream_key, status.segments, result)
    count = PAGE
    try:
        while result.entries < max_entries:
            want = min(count, max_entries - result.entries)
            page = cast(
                list[Entry], await redis.xrange(stream_key, id_text(low), id_text(high), count=want)
            )
            if page:
                await anyio.to_thread.run_sync(job.write, page)
                result.entries += len(page)
                low = successor(id_key(page[-1][0]))
                size = sum(len(v) for _, fields in page for v in fields.values())
                count = max(10, min(PAGE, PAGE_BYTES * len(page) // max(size, 1)))
            if len(page) < want or low > high:
                break
        else:
            result.done = False
        await anyio.to_thread.run_sync(job.finish)
    finally:
        if job.open is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(job.discard)
    return result


async def archive_before_trim(
    archive: Archive,
    redis: Redis,
    stream_key: str,
    cut_id: str | None,
    *,
    max_entries: int = 50_000,
    whole_windows: bool = True,
) -> str:
    """Archive what trimming the stream at MINID ``cut_id`` would remove; return the safe MINID.

    ``cut_id`` is the retention cut (entries with smaller ids go), or None to
    archive everything (e.g. with a length limit, whose cut only the trim
    script knows). The returned id is the cut to trim at now: never past the
    archive's watermark + 1, so only archived entries are trimmed (``0-0``
    when nothing is archived yet). With ``whole_windows`` (the default) only
    time windows that ended before the cut are exported, one segment per
    stream per window, and the trim waits for the rest of the window.
    """
    until = "+" if cut_id is None else "(" + cut_id
    result = await export(
        archive, redis, stream_key, until, max_entries=max_entries, whole_windows=whole_windows
    )
    if result.watermark is None:
        return "0-0"
    safe = successor(id_key(result.watermark))
    if cut_id is not None:
        safe = min(safe, id_key(cut_id))
    return id_text(safe)


class _Export:
    """The file side of one export call (runs in worker threads, one call at a time)."""

    def __init__(
        self, archive: Archive, stream_key: str, known: list[Segment], result: ExportResult
    ) -> None:
        self.archive = archive
        self.stream_key = stream_key
        self.directory = archive.directory(stream_key)
        self.segments = list(known)
        self.result = result
        self.open: _SegmentFile | None = None

    def write(self, page: list[Entry]) -> None:
        window_ms = self.archive.window_ms
        for raw_id, fields in page:
            key = id_key(raw_id)
            window = key[0] - key[0] % window_ms
            if self.open is not None and self.open.window != window:
                self._commit()
            if self.open is None:
                self.open = _SegmentFile(self.archive.store.new_file(self.directory), window, key)
            self.open.add(key, encode_entry(id_text(key), fields))
        if self.open is not None:
            self.open.flush()

    def finish(self) -> None:
        if self.open is not None:
            self._commit()

    def discard(self) -> None:
        if self.open is not None:
            self.open.pending.discard()
            self.open = None

    def _commit(self) -> None:
        assert self.open is not None
        current, self.open = self.open, None
        segment = current.commit(self.directory)
        # The segment is durable before the index names it: a crash in between
        # leaves a segment the listing still finds (the watermark counts it).
        self.segments.append(segment)
        self.result.segments.append(segment)
        self.result.watermark = max(
            (s.last for s in self.segments), key=id_key, default=self.result.watermark
        )
        self.archive.known_watermarks[self.stream_key] = self.result.watermark
        self.archive.write_index(self.stream_key, self.segments)


class _SegmentFile:
    def __init__(self, pending: PendingFile, window: int, first: IdKey) -> None:
        self.pending = pending
        self.window = window
        self.first = first
        self.last = first
        self.count = 0
        self._lines: list[bytes] = []
        # mtime=0: the same entries make the same bytes.
        self.gzip = gzip.GzipFile(
            fileobj=pending.file, mode="wb", compresslevel=COMPRESSLEVEL, mtime=0
        )

    def add(self, key: IdKey, line: bytes) -> None:
        self._lines.append(line)
        self.last = key
        self.count += 1

    def flush(self) -> None:
        if self._lines:
            self.gzip.write(b"".join(self._lines))
            self._lines.clear()

    def commit(self, directory: str) -> Segment:
        self.flush()
        self.gzip.close()  # writes the trailer; leaves the underlying file open
        name = segment_name(self.window, self.first, self.last)
        size = self.pending.commit(f"{directory}/{name}")
        return Segment(name, id_text(self.first), id_text(self.last), size, self.count)
