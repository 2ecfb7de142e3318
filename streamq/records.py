"""History records: one stream entry as audit data, and the bounds of a range.

The plain data that ``Replay`` yields and that the CLI prints: built from
XRANGE replies at 150k+ per second, so kept free of I/O. ``parse_bound``
turns a date, datetime, epoch ms or stream id into an XRANGE bound.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
from dataclasses import dataclass
from typing import Any

from streamq.errors import ConfigError

ENTRY_ID = re.compile(r"^\d+(-\d+)?$")
Bound = dt.datetime | dt.date | str | int | None


@dataclass(slots=True)  # not frozen: built per entry at 150k+/s, and frozen init costs
class HistoryRecord:
    source: str
    """'event', 'message' (a job's stream entry), 'dlq' or 'job' (its current hash)."""
    id: str
    ts_ms: int
    kind: str
    """The event kind; 'message' for a stream entry, 'dead' for a DLQ entry, else the status."""
    job_id: str | None
    task: str | None
    fields: dict[str, str]
    binary: bool = False
    """Some field is not UTF-8 (a binary payload): its text holds the bytes losslessly
    (``surrogateescape``); ``raw(name)`` gives them back exactly."""
    partition: int = 0
    """The queue partition whose stream holds the entry (``streamq.partitions``);
    shown as ``partition`` in ``as_dict`` when it is not 0."""

    def raw(self, name: str) -> bytes:
        """A field's exact bytes, as stored."""
        return self.fields[name].encode("utf-8", "surrogateescape")

    def as_dict(self, *, binary: str = "base64") -> dict[str, Any]:
        """The record as one JSON-ready mapping.

        A value that is not UTF-8 is written ``"base64:<its bytes>"``
        (``binary="base64"``) or kept as escaped text (``binary="text"``).
        """
        record: dict[str, Any] = {
            "source": self.source, "id": self.id, "time": _iso(self.ts_ms), "kind": self.kind,
            "job_id": self.job_id, "task": self.task,
        }  # fmt: skip
        if self.partition:
            record["partition"] = self.partition
        # A message's own ``id`` field is the job id (already ``job_id``): the
        # record's keys win, so ``id`` stays the entry id that ``dlq`` takes.
        if not self.binary or binary == "text":
            for key, value in self.fields.items():
                record.setdefault(key, value)
            return record
        for key, value in self.fields.items():
            record.setdefault(key, _shown(value))
        return record


@functools.lru_cache(maxsize=4096)
def _iso(ts_ms: int) -> str:
    # Cached: consecutive records mostly share their millisecond.
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _shown(value: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogateescape")
        return "base64:" + base64.b64encode(raw).decode()
    return value


def parse_bound(value: Bound, *, end: bool = False) -> str | None:
    """A date, datetime, epoch ms or stream id → a stream id bound (inclusive).

    A date means its whole UTC day: as ``until`` it includes the day's end.
    Naive datetimes are taken as UTC. ConfigError for anything that is none
    of these or that no stream id can hold (before 1970, past 64 bits).
    """
    if value is None:
        return None
    seq = _MAX_SEQ if end else 0
    if isinstance(value, int):
        return _stream_id(value, seq, value)
    if isinstance(value, str):
        text = value.strip()
        match = ENTRY_ID.match(text)
        if match:
            ms, _, given_seq = text.partition("-")
            return _stream_id(int(ms), int(given_seq) if given_seq else seq, value)
        try:
            value = (
                dt.datetime.fromisoformat(text)
                if "T" in text or " " in text
                else dt.date.fromisoformat(text)
            )
        except ValueError:
            raise ConfigError(f"{text!r} is not a date, datetime, epoch ms or stream id") from None
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return _stream_id(int(moment.timestamp() * 1000), seq, value)
    day_ms = int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp() * 1000)
    if end:  # in ms: the day after 9999-12-31 is past what a datetime can hold
        return _stream_id(day_ms + _DAY_MS - 1, _MAX_SEQ, value)
    return _stream_id(day_ms, 0, value)


def _stream_id(ms: int, seq: int, given: object) -> str:
    if ms < 0:
        raise ConfigError(f"{given!r} is before 1970, where stream ids start")
    if ms > _MAX_SEQ or seq > _MAX_SEQ:
        raise ConfigError(f"{given!r} does not fit a stream id (64-bit ms and sequence)")
    return f"{ms}-{seq}"


def bound_key(bound: str) -> tuple[int, int]:
    """A bound from ``parse_bound`` as (ms, seq), to compare two bounds."""
    return entry_key(bound)


_MAX_SEQ = 18446744073709551615
_DAY_MS = 86_400_000


def record_of(source: str, entry_id: bytes, raw: dict[bytes, bytes] | list[bytes]) -> HistoryRecord:
    """One entry as a record; ``raw`` is its fields as a mapping or XRANGE's flat list."""
    binary = False
    try:
        if isinstance(raw, list):
            text = list(map(bytes.decode, raw))
            fields = dict(zip(text[::2], text[1::2], strict=True))
        else:
            fields = dict(zip(map(bytes.decode, raw), map(bytes.decode, raw.values()), strict=True))
    except UnicodeDecodeError:  # a binary payload: keep its bytes, losslessly
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
        fields = {
            k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in pairs
        }
        binary = True
    text_id = entry_id.decode()
    # The entry id's time is the server's clock, the same for every stream, so
    # records from different streams sort consistently (``ts`` is a client's).
    ts_ms = int(text_id.partition("-")[0])
    if source == "event":
        kind, job = fields.pop("kind", ""), fields.pop("job", None)
        task = fields.pop("task", None)
    else:
        kind = "dead" if source == "dlq" else "message"
        job, task = fields.get("id"), fields.get("task")
    return HistoryRecord(source, text_id, ts_ms, kind, job or None, task, fields, binary)


def entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
