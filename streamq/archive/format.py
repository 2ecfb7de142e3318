"""The archive's on-disk format: stream ids, range bounds, segment names, lines.

A segment is a gzip file of JSON lines, one stream entry per line, in id
order::

    {"id":"1762003200000-0","fields":{"id":"4f1c…","task":"send","payload":"[\\"a\\"]"}}
    {"id":"1762003200000-1","fields":{"payload":{"b64":"gAN9cQA…"}}}
    {"id":"1762003200001-0","pairs":[[{"b64":"/w=="},"v"]]}

A value that is valid UTF-8 is a JSON string; any other value is
``{"b64": …}`` (standard base64), so payloads of binary serializers come back
byte-exact. Field names are the keys of ``fields``; an entry with a name that
is not UTF-8 is written as ``pairs`` instead. ``zcat segment | jq`` reads it.

A segment's name says what it holds: ``<window>_<first id>_<last id>.jsonl.gz``,
``<window>`` the UTC start of its time window (``20261101T130000Z``), both ids
inclusive. The listing of a stream's directory is thus a complete index of
id ranges; ``index.json`` beside the segments adds their entry counts.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

MAX_PART = 18446744073709551615
"""The largest ms or sequence number of a stream id (64 bits)."""

IdKey = tuple[int, int]
"""A stream id as (ms, seq): compares in stream order."""

FIRST: IdKey = (0, 0)
LAST: IdKey = (MAX_PART, MAX_PART)
SUFFIX = ".jsonl.gz"
INDEX = "index.json"
_NAME = re.compile(r"^(?:[0-9TZ]+_)?(\d+-\d+)_(\d+-\d+)\.jsonl\.gz$")
_ID = re.compile(r"^(\d+)(?:-(\d+))?$")


class FormatError(ValueError):
    """A segment or index that does not read as the archive wrote it."""


def id_key(entry_id: str | bytes) -> IdKey:
    """``"ms-seq"`` → (ms, seq)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def id_text(key: IdKey) -> str:
    return f"{key[0]}-{key[1]}"


def successor(key: IdKey) -> IdKey:
    """The smallest id after ``key`` (``key`` must not be LAST)."""
    ms, seq = key
    return (ms, seq + 1) if seq < MAX_PART else (ms + 1, 0)


def predecessor(key: IdKey) -> IdKey | None:
    """The largest id before ``key``; None before ``0-0``."""
    ms, seq = key
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, MAX_PART) if ms > 0 else None


def parse_range(start: str, end: str) -> tuple[IdKey, IdKey] | None:
    """XRANGE-style bounds → an inclusive (low, high) pair; None for an empty range.

    Each bound is ``-`` / ``+``, ``ms``, ``ms-seq`` or ``(`` + an id for an
    exclusive bound, as XRANGE takes them.
    """
    low: IdKey | None
    high: IdKey | None
    if start == "-":
        low = FIRST
    elif start.startswith("("):
        low = _parse_id(start[1:], end=False)
        low = successor(low) if low != LAST else None
    else:
        low = _parse_id(start, end=False)
    if end == "+":
        high = LAST
    elif end.startswith("("):
        high = predecessor(_parse_id(end[1:], end=True))
    else:
        high = _parse_id(end, end=True)
    if low is None or high is None or low > high:
        return None
    return low, high


def _parse_id(text: str, *, end: bool) -> IdKey:
    match = _ID.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a stream id bound (ms-seq, ms, '-', '+', '(' id)")
    ms = int(match[1])
    seq = int(match[2]) if match[2] is not None else (MAX_PART if end else 0)
    if ms > MAX_PART or seq > MAX_PART:
        raise ValueError(f"{text!r} does not fit a stream id (64-bit ms and sequence)")
    return ms, seq


# -- segment names --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """One immutable segment file: every entry of its stream in [first, last]."""

    name: str
    first: str
    last: str
    bytes: int
    count: int | None = None
    """Entries in it, from the index; None for a segment the index does not list yet."""

    @property
    def first_key(self) -> IdKey:
        return id_key(self.first)

    @property
    def last_key(self) -> IdKey:
        return id_key(self.last)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "first": self.first, "last": self.last,
            "count": self.count, "bytes": self.bytes,
        }  # fmt: skip


def segment_name(window_start_ms: int, first: IdKey, last: IdKey) -> str:
    return f"{window_label(window_start_ms)}_{id_text(first)}_{id_text(last)}{SUFFIX}"


def window_label(ms: int) -> str:
    """``20261101T130000Z``; ``0`` + ms for a time no calendar holds (ids set by hand)."""
    try:
        moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ms}Z"
    return moment.strftime("%Y%m%dT%H%M%SZ")


def parse_segment_name(name: str, size: int) -> Segment | None:
    """The segment a file name describes; None for any other file (temporaries, the index)."""
    match = _NAME.match(name)
    if not match:
        return None
    first, last = match[1], match[2]
    if id_key(first) > id_key(last):
        return None
    return Segment(name, first, last, size)


# -- lines ----------------------------------------------------------------------------


def _value(raw: bytes) -> str | dict[str, str]:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode()}


def encode_entry(entry_id: str, fields: dict[bytes, bytes]) -> bytes:
    """One JSON line (with its newline) for a stream entry."""
    record: dict[str, Any] = {"id": entry_id}
    try:
        record["fields"] = {name.decode(): _value(value) for name, value in fields.items()}
    except UnicodeDecodeError:
        record["pairs"] = [[_value(name), _value(value)] for name, value in fields.items()]
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def _raw(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        return base64.b64decode(value["b64"], validate=True)
    raise FormatError(f"not a field value: {value!r}")


def decode_entry(line: bytes) -> tuple[str, dict[bytes, bytes]]:
    """A line from ``encode_entry`` → (id, fields), byte-exact."""
    try:
        record = orjson.loads(line)
        entry_id = record["id"]
        if "fields" in record:
            return entry_id, {name.encode(): _raw(v) for name, v in record["fields"].items()}
        return entry_id, {_raw(name): _raw(value) for name, value in record["pairs"]}
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise FormatError(f"not an archive line: {line[:80]!r} ({exc})") from None


def decode_lines(lines: Iterator[bytes]) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    for line in lines:
        if line.strip():
            yield decode_entry(line)
