"""The archive: history that retention trims, kept in compressed, append-only files.

An ``Archive`` is a local directory or any fsspec URL (``s3://bucket/prefix``,
``memory://…``; ``pip install 'streamq[archive]'``). Per stream it holds
immutable gzip JSON-lines segments, one per time window (a UTC hour by
default) per export, named by their id range, and a small ``index.json``
with their entry counts (see ``streamq.archive.format``)::

    <location>/<prefix>/<queue>/stream/<priority>/20261101T130000Z_<first>_<last>.jsonl.gz
    <location>/<prefix>/<queue>/events/…
    <location>/<prefix>/<queue>/dlq/…
    …/index.json

Writing (``Archive.export``, ``archive_before_trim``): entries after the
archive's watermark, in bounded calls; each segment is whole and durable
before the next, so a crash re-exports and never skips, and trimming no
further than the watermark loses nothing. Reading (``Archive.read``,
``history``): only the segments overlapping a range are opened, each id is
yielded once, and ``history`` joins the archive and the live stream into one.
"""

from __future__ import annotations

from streamq.archive.core import Archive, StreamStatus
from streamq.archive.format import FormatError, Segment
from streamq.archive.history import history
from streamq.archive.writer import ExportResult, archive_before_trim

__all__ = [
    "Archive",
    "ExportResult",
    "FormatError",
    "Segment",
    "StreamStatus",
    "archive_before_trim",
    "history",
]
