"""The stream entry: versioned job fields, and why an entry cannot be decoded.

A stream entry is the only thing a worker can trust to exist; everything in
it may be garbage (written by another program, an older streamq, or a
bug). ``decode`` therefore never raises anything but ``PoisonMessage``,
whose ``reason`` ends up in the DLQ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from streamq.options import (
    RESULT_TTL_FIELD,
    RETRY_INTERVALS_FIELD,
    parse_intervals,
    parse_result_ttl,
)

if TYPE_CHECKING:
    from streamq.caps import JobCaps
    from streamq.signing import Verifier

VERSION = b"1"
HEADERS_FIELD = "headers"
MAX_HEADERS_BYTES = 8192
"""A job's headers, encoded as one JSON object, may take at most this many bytes."""
EMPTY_HEADERS: Mapping[str, str] = MappingProxyType({})


class PoisonMessage(Exception):
    """A stream entry that cannot become a job; ``reason`` says why."""

    def __init__(self, reason: str, job_id: str | None = None, task: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id
        self.task = task


class UnverifiedEntry(PoisonMessage):
    """An entry whose signature does not verify. It names no job (``job_id`` None):
    the id it claims (``claimed_id``) is untrusted, and a forged copy must not mark
    the job of that id dead; the worker marks the job only if this very message is
    the one its hash records (``streamq.signing.owned_job``)."""

    def __init__(self, reason: str, claimed_id: bytes | None) -> None:
        super().__init__(reason)
        self.claimed_id = claimed_id


@dataclass(frozen=True, slots=True)
class Envelope:
    job_id: str
    task: str
    content_type: str
    payload: bytes
    attempt: int
    enqueued_ms: int
    max_retries: int | None = None
    """Set when the caller overrode the task's option for this job (``with_options``)."""
    timeout_s: float | None = None
    """Likewise; ``None`` means the task's own option applies."""
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY_HEADERS)
    """The job's string headers (read-only), from the entry's ``headers`` field."""
    retry_intervals_s: tuple[float, ...] | None = None
    """A per-job retry schedule (``with_options(retry=...)``); None: the task's."""
    result_ttl_s: float | None = None
    """A per-job result TTL (``with_options(result_ttl=...)``); None: the task's."""


def encode(
    *, job_id: str, task: str, content_type: str, payload: bytes, enqueued_ms: int
) -> list[bytes | str]:
    """Field/value pairs for XADD, flattened, in the order the scripts expect."""
    return [
        "v", VERSION,
        "id", job_id,
        "task", task,
        "ct", content_type,
        "payload", payload,
        "attempt", "1",
        "enq_ms", str(enqueued_ms),
    ]  # fmt: skip


_RETRY_INTERVALS = RETRY_INTERVALS_FIELD.encode()
_RESULT_TTL = RESULT_TTL_FIELD.encode()


def decode(
    fields: Mapping[bytes, bytes] | None,
    verifier: Verifier | None = None,
    caps: JobCaps | None = None,
) -> Envelope:
    """Turn raw entry fields into an Envelope, or raise PoisonMessage with a reason.

    A ``verifier`` checks the entry's signature before anything else is read
    (``streamq.signing``); ``caps`` bound the per-job options it carries.
    """
    if not fields:
        raise PoisonMessage("entry has no fields (deleted or trimmed while pending)")
    if verifier is not None and (refused := verifier.reason(fields)) is not None:
        raise UnverifiedEntry(refused, fields.get(b"id"))
    env = _decode(fields)
    if caps is not None and (over := caps.entry_violation(env)) is not None:
        raise PoisonMessage(over, env.job_id, env.task)
    return env


def _decode(fields: Mapping[bytes, bytes]) -> Envelope:
    job_id = _text(fields, b"id")
    task = _text(fields, b"task")
    version = fields.get(b"v")
    if version != VERSION:
        raise PoisonMessage(f"unsupported envelope version {version!r}", job_id, task)
    if job_id is None:
        raise PoisonMessage("entry has no job id", None, task)
    if task is None:
        raise PoisonMessage("entry names no task", job_id)
    content_type = _text(fields, b"ct")
    payload = fields.get(b"payload")
    if content_type is None or payload is None:
        raise PoisonMessage("entry has no payload or content type", job_id, task)
    try:
        attempt = int(fields.get(b"attempt", b"1"))
        enqueued_ms = int(fields.get(b"enq_ms", b"0"))
        raw_retries = fields.get(b"max_retries")
        max_retries = None if raw_retries is None else int(raw_retries)
        raw_timeout = fields.get(b"timeout")
        timeout_s = None if raw_timeout is None else float(raw_timeout)
    except ValueError:
        raise PoisonMessage(
            "attempt, enq_ms, max_retries or timeout is not a number", job_id, task
        ) from None
    if (max_retries is not None and max_retries < 0) or (
        timeout_s is not None and not 0 < timeout_s < float("inf")
    ):
        raise PoisonMessage("max_retries or timeout is out of range", job_id, task)
    raw_headers = fields.get(b"headers")
    headers = EMPTY_HEADERS if raw_headers is None else _headers(raw_headers, job_id, task)
    raw_intervals = fields.get(_RETRY_INTERVALS)
    raw_ttl = fields.get(_RESULT_TTL)
    try:
        intervals = None if raw_intervals is None else parse_intervals(raw_intervals)
        result_ttl_s = None if raw_ttl is None else parse_result_ttl(raw_ttl)
    except ValueError as exc:
        raise PoisonMessage(str(exc), job_id, task) from None
    return Envelope(
        job_id, task, content_type, payload, attempt, enqueued_ms, max_retries, timeout_s, headers,
        intervals, result_ttl_s,
    )  # fmt: skip


def encode_headers(headers: object) -> str:
    """The entry's ``headers`` value: a compact JSON object of str to str.

    Raises ValueError saying what is wrong: not a mapping, a name that is not a
    non-empty string, a value that is not a string, text that is not valid
    UTF-8, or more than ``MAX_HEADERS_BYTES`` once encoded.
    """
    if not isinstance(headers, Mapping):
        raise ValueError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"header names must be non-empty strings, got {name!r}")
        if not isinstance(value, str):
            raise ValueError(f"header values must be strings; {name!r} is a {type(value).__name__}")
    text = json.dumps(dict(headers), ensure_ascii=False, separators=(",", ":"))
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise ValueError("headers must be valid UTF-8 text (no lone surrogates)") from None
    if size > MAX_HEADERS_BYTES:
        raise ValueError(f"headers encode to {size} bytes; the limit is {MAX_HEADERS_BYTES}")
    return text


def _headers(raw: bytes, job_id: str, task: str) -> Mapping[str, str]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        reason = "headers is not a JSON object of non-empty names to strings"
        raise PoisonMessage(reason, job_id, task)
    return MappingProxyType(value)


def delayed_member(member: bytes) -> tuple[str | None, dict[str, Any]] | None:
    """A delayed-set member (JSON ``[priority, field, value, ...]``, as the scripts
    write it) as (its priority, or None when that is not a string; its entry
    fields), or None when the member is not one."""
    try:
        entry = json.loads(member)
    except ValueError:
        return None
    if not isinstance(entry, list):
        return None
    priority = entry[0] if entry and isinstance(entry[0], str) else None
    return priority, dict(zip(entry[1::2], entry[2::2], strict=False))


def delayed_fields(member: bytes) -> dict[str, Any] | None:
    """The entry fields of a delayed-set member, or None when the member is not one."""
    parsed = delayed_member(member)
    return None if parsed is None else parsed[1]


def decode_arguments(value: Any) -> tuple[list[Any], dict[str, Any]]:
    """Check the decoded payload has the ``{"args": [...], "kwargs": {...}}`` shape."""
    if not isinstance(value, dict) or set(value) != {"args", "kwargs"}:
        raise PoisonMessage("payload is not an object with exactly args and kwargs")
    args, kwargs = value["args"], value["kwargs"]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise PoisonMessage("payload args is not a list or kwargs is not an object")
    return args, kwargs


def _text(fields: Mapping[bytes, bytes], name: bytes) -> str | None:
    raw = fields.get(name)
    if raw is None:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise PoisonMessage(f"field {name.decode()} is not UTF-8") from None
    return text or None
