"""``Archive``: one archive location, its per-stream segments, index and reader."""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from streamq.archive.format import (
    INDEX,
    FormatError,
    IdKey,
    Segment,
    decode_lines,
    id_key,
    parse_range,
    parse_segment_name,
)
from streamq.archive.store import Store, open_store
from streamq.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamq.archive.writer import ExportResult

_KEY = re.compile(r"^(?P<prefix>.*?):\{(?P<queue>[^}]*)\}:(?P<rest>.+)$")
DEFAULT_WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """What the archive holds for one stream."""

    stream: str
    directory: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def oldest(self) -> str | None:
        return min((s.first for s in self.segments), key=id_key, default=None)

    @property
    def watermark(self) -> str | None:
        return max((s.last for s in self.segments), key=id_key, default=None)

    @property
    def entries(self) -> int | None:
        """Entries in all segments; None while a segment's count is unknown (not indexed)."""
        counts = [s.count for s in self.segments]
        return None if None in counts else sum(c or 0 for c in counts)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments)

    @property
    def unindexed(self) -> int:
        """Segments that exist but that the index does not list (found by the listing)."""
        return sum(1 for s in self.segments if s.count is None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream, "directory": self.directory, "oldest": self.oldest,
            "watermark": self.watermark, "entries": self.entries, "bytes": self.bytes,
            "unindexed": self.unindexed, "segments": [s.as_dict() for s in self.segments],
        }  # fmt: skip


class Archive:
    """Compressed, append-only history of streams in a directory or an fsspec URL.

    Layout, below the location: one directory per stream, named from its key
    (``streamq:{emails}:stream:high`` → ``streamq/emails/stream/high``), that
    holds immutable segments and ``index.json``. Everything is derived from
    the segments themselves: the index only caches their entry counts, and a
    segment it does not list (a crash between the two writes) is found by
    listing the directory and used all the same.

    The methods other than ``export`` do blocking IO (local disk, or network
    for a URL): call them from a worker thread in async code.
    """

    def __init__(
        self, location: str | os.PathLike[str], *, window_s: float = DEFAULT_WINDOW_S
    ) -> None:
        if not window_s > 0:
            raise ConfigError(f"archive window_s must be > 0, got {window_s!r}")
        self.store: Store = open_store(location)
        self.location = self.store.location
        self.window_ms = max(1, int(window_s * 1000))
        """Each export writes one segment per stream per window of this many ms (UTC-aligned)."""
        self.known_watermarks: dict[str, str | None] = {}
        """The watermark per stream as this object last listed or wrote it (exports only)."""

    def __repr__(self) -> str:
        return f"Archive({self.location!r})"

    # -- layout -------------------------------------------------------------------------

    def directory(self, stream_key: str) -> str:
        """The stream's directory, relative to the location."""
        match = _KEY.match(stream_key)
        parts = (
            [match["prefix"], match["queue"], *match["rest"].split(":")]
            if match
            else ["_keys", stream_key]
        )
        return "/".join(_safe(part) for part in parts)

    # -- what is there --------------------------------------------------------------------

    def status(self, stream_key: str) -> StreamStatus:
        """Every segment of the stream (listing and index reconciled), in id order."""
        directory = self.directory(stream_key)
        counts = self._index_counts(directory)
        segments = []
        for name, size in self.store.list(directory):
            segment = parse_segment_name(name, size)
            if segment is not None:
                segments.append(replace(segment, count=counts.get(name)))
        segments.sort(key=lambda s: (s.first_key, s.last_key, s.name))
        return StreamStatus(stream_key, directory, segments)

    def watermark(self, stream_key: str) -> str | None:
        """The last id safely in the archive for this stream (None: nothing archived).

        Every entry the stream held up to it when it was exported is in a segment:
        exports go forward from the watermark, one whole segment at a time.
        """
        return self.status(stream_key).watermark

    def oldest(self, stream_key: str) -> str | None:
        """The first archived id of this stream."""
        return self.status(stream_key).oldest

    def segments(self, stream_key: str, start: str = "-", end: str = "+") -> list[Segment]:
        """The segments a ``read`` of this range opens: those overlapping it, in id order."""
        bounds = parse_range(start, end)
        if bounds is None:
            return []
        low, high = bounds
        return [
            s for s in self.status(stream_key).segments if s.last_key >= low and s.first_key <= high
        ]

    # -- reading ----------------------------------------------------------------------------

    def read(
        self, stream_key: str, start: str = "-", end: str = "+", *, contains: str | None = None
    ) -> Generator[tuple[str, dict[bytes, bytes]], None, None]:
        """Archived entries with ids in [start, end] (XRANGE bounds), in id order, each once.

        Opens only the segments overlapping the range, one at a time. Segments
        that overlap each other (two exports at once) yield each id once.
        ``contains``: only entries with a field name or value that is UTF-8 text
        containing this; lines without it are skipped before they are decoded
        (a job's story from a long archive, by its id).
        """
        bounds = parse_range(start, end)
        if bounds is None:
            return
        low, high = bounds
        directory = self.directory(stream_key)
        needle = _json_text(contains) if contains is not None else None
        wanted = contains.encode() if contains is not None else None
        after: IdKey | None = None
        for segment in self.segments(stream_key, start, end):
            if after is not None and segment.last_key <= after:
                continue
            for entry_id, fields in self._entries(f"{directory}/{segment.name}", needle):
                key = id_key(entry_id)
                if key < low or (after is not None and key <= after):
                    continue
                if key > high:
                    break
                if wanted is not None and not has_text(fields, wanted):
                    continue
                after = key
                yield entry_id, fields
            # A segment holds every entry of its range: nothing in it is left to yield.
            reached = min(segment.last_key, high)
            after = reached if after is None else max(after, reached)

    def _entries(
        self, path: str, needle: bytes | None = None
    ) -> Iterator[tuple[str, dict[bytes, bytes]]]:
        try:
            with self.store.open_read(path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                lines = iter(gz) if needle is None else (x for x in gz if needle in x)
                yield from decode_lines(lines)
        except (OSError, EOFError, zlib.error) as exc:
            if isinstance(exc, FileNotFoundError):
                raise FormatError(f"archive segment {path} disappeared while reading") from exc
            raise FormatError(f"archive segment {path} is damaged: {exc}") from exc
        except FormatError as exc:
            raise FormatError(f"archive segment {path}: {exc}") from None

    def count(self, stream_key: str, segment: Segment) -> int:
        """Entries in one segment, by reading it."""
        return sum(1 for _ in self._entries(f"{self.directory(stream_key)}/{segment.name}"))

    # -- the index ----------------------------------------------------------------------------

    def _index_counts(self, directory: str) -> dict[str, int]:
        data = self.store.read_bytes(f"{directory}/{INDEX}")
        if not data:
            return {}
        try:
            index = orjson.loads(data)
            return {
                str(s["name"]): int(s["count"])
                for s in index["segments"]
                if isinstance(s.get("count"), int)
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return {}  # a torn or foreign index: the listing is the truth, counts are redone

    def write_index(self, stream_key: str, segments: list[Segment]) -> None:
        """Replace the stream's index with these segments (each with its count)."""
        directory = self.directory(stream_key)
        body = {
            "version": 1,
            "stream": stream_key,
            "segments": [s.as_dict() for s in sorted(segments, key=lambda s: s.first_key)],
        }
        self.store.write_bytes(
            f"{directory}/{INDEX}", orjson.dumps(body, option=orjson.OPT_INDENT_2)
        )

    def indexed(self, stream_key: str) -> StreamStatus:
        """The stream's status with every segment counted (reading those the index lacks)."""
        status = self.status(stream_key)
        if not status.unindexed:
            return status
        segments = [
            s if s.count is not None else replace(s, count=self.count(stream_key, s))
            for s in status.segments
        ]
        return replace(status, segments=segments)

    def rebuild_index(self, stream_key: str) -> StreamStatus:
        """Recount every segment of the stream and rewrite its index from the listing."""
        status = self.status(stream_key)
        segments = [replace(s, count=self.count(stream_key, s)) for s in status.segments]
        self.write_index(stream_key, segments)
        return replace(status, segments=segments)

    # -- writing ----------------------------------------------------------------------------

    async def export(
        self,
        redis: Redis,
        stream_key: str,
        until: str = "+",
        *,
        max_entries: int = 50_000,
        whole_windows: bool = False,
    ) -> ExportResult:
        """Write the stream's entries after the watermark up to ``until`` into new segments.

        See ``streamq.archive.writer.export``.
        """
        from streamq.archive.writer import export

        return await export(
            self, redis, stream_key, until, max_entries=max_entries, whole_windows=whole_windows
        )


def _safe(part: str) -> str:
    """One path component: no '/', and no leading '.' (hidden temporaries, '..')."""
    text = quote(part, safe="") or "%00"
    return "%2E" + text[1:] if text.startswith(".") else text


def has_text(fields: dict[bytes, bytes], text: bytes) -> bool:
    """Whether a field name or value is UTF-8 text that contains ``text``."""
    return any(
        text in raw and _is_text(raw) for name, value in fields.items() for raw in (name, value)
    )


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _json_text(text: str) -> bytes:
    """``text`` as it appears inside any JSON string (in a line) that contains it."""
    return orjson.dumps(text)[1:-1]
