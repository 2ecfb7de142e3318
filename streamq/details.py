"""Job details: one job's hash joined with its stream entry, as typed values.

The job hash holds the status, attempts, result or error and timestamps (ms);
the arguments and headers live only in the job's current entry, which the
hash locates: ``msg_id`` names it in the stream of the job's priority, or is
``delayed`` (a member of the delayed set, scored by ``due_ms``, that names
the job), and a dead or failed job's ``dlq_id`` names its DLQ entry. Reading
the hash and then the entry is not atomic, so a job that moves in between
(promoted, retried) is looked up again, a few times at most.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from streamq.envelope import PoisonMessage, decode
from streamq.errors import JobNotFound
from streamq.job import JobStatus
from streamq.typed import conversions, convert
from streamq.worker.execute import load_arguments  # the worker's own decoding

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamq.app import App
    from streamq.task import Task

_LOOKUPS = 3  # the job moved between reading its hash and its entry: look again


@dataclass(frozen=True, slots=True)
class JobDetails:
    """A snapshot of one job (``Job.details()``).

    ``args``, ``kwargs`` and ``headers`` come from the job's stream entry; they
    are None when that entry is gone (trimmed by retention, deleted, or purged
    from the DLQ) or cannot be decoded. The arguments are decoded with the App's
    serializer and, when the task is registered on the App, converted to its
    handler's annotations as the handler gets them (left as decoded if they do
    not fit). Timestamps are timezone-aware UTC datetimes, None when not
    reached: ``enqueued_at`` is the producer's clock, ``due_at`` the server's
    (when a scheduled job or a retry is, or was, due).
    """

    id: str
    task: str | None
    status: JobStatus
    attempts: int
    """Attempts started so far (0 before the first)."""
    priority: str | None
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    headers: Mapping[str, str] | None
    enqueued_at: dt.datetime | None
    started_at: dt.datetime | None
    """When the last attempt started."""
    finished_at: dt.datetime | None
    due_at: dt.datetime | None
    result: Any
    """The decoded result of a succeeded job (converted like ``Job.result()``), else None."""
    error_type: str | None
    error: str | None
    traceback: str | None
    worker: str | None
    """The consumer that ran the last attempt (``host:pid:random``)."""
    duration_ms: int | None
    """How long the last attempt's handler ran."""


async def read_details(app: App, job_id: str) -> JobDetails:
    """The job's details; raises JobNotFound when it has no hash."""
    redis = await app.redis()
    key = app.keys.job(job_id)
    fields: dict[bytes, bytes] = {}
    entry: dict[bytes, bytes] | None = None
    for _ in range(_LOOKUPS):
        fields = cast(dict[bytes, bytes], await redis.hgetall(key))
        if not fields:
            raise JobNotFound(job_id)
        entry = await _find_entry(app, redis, job_id, fields)
        if entry is not None or await redis.hget(key, "msg_id") == fields.get(b"msg_id"):
            break
    return _details(app, job_id, fields, entry)


async def _find_entry(
    app: App, redis: Redis, job_id: str, fields: Mapping[bytes, bytes]
) -> dict[bytes, bytes] | None:
    msg_id = fields.get(b"msg_id")
    wanted = job_id.encode()
    if msg_id == b"delayed":
        due = fields.get(b"due_ms")
        if due is not None:
            members = cast(
                list[bytes], await redis.zrangebyscore(app.keys.delayed, due.decode(), due.decode())
            )
            for member in members:
                found = _member_fields(member)
                if found is not None and found.get(b"id") == wanted:
                    return found
    elif msg_id:
        # The priority's stream first; a member of an unknown priority was promoted
        # into the lowest one, so every stream is asked (entry ids are per stream).
        async with redis.pipeline(transaction=False) as pipe:
            for stream in app.streams:
                pipe.xrange(stream, msg_id, msg_id)
            replies = cast(list[list[tuple[bytes, dict[bytes, bytes]]]], await pipe.execute())
        for reply in replies:
            if reply and reply[0][1] and reply[0][1].get(b"id") == wanted:
                return reply[0][1]
    dlq_id = fields.get(b"dlq_id")
    if dlq_id:
        reply = cast(
            list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(app.keys.dlq, dlq_id, dlq_id)
        )
        if reply and reply[0][1] and reply[0][1].get(b"id") == wanted:
            return reply[0][1]
    return None


def _member_fields(member: bytes) -> dict[bytes, bytes] | None:
    """A delayed member (cjson ``[priority, field, value, ...]``) as entry fields.

    cjson copies a payload's bytes as they are (msgpack is not UTF-8):
    surrogateescape carries them through the JSON decoder unchanged.
    """
    try:
        values = json.loads(member.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return None
    raw = [v.encode("utf-8", "surrogateescape") for v in values[1:]]
    return dict(zip(raw[::2], raw[1::2], strict=False))


def _details(
    app: App, job_id: str, fields: Mapping[bytes, bytes], entry: Mapping[bytes, bytes] | None
) -> JobDetails:
    def text(name: bytes) -> str | None:
        raw = fields.get(name)
        return None if raw is None else raw.decode(errors="replace")

    task_name = text(b"task")
    task = app.tasks.get(task_name) if task_name else None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    if entry is not None:
        try:
            env = decode(entry)
        except PoisonMessage:
            pass
        else:
            headers = env.headers
            task_name = task_name or env.task
            for converting in (task, None) if task is not None else (None,):
                try:
                    args, kwargs = load_arguments(app.serializer, env, converting)
                    break
                except PoisonMessage:
                    continue
    status = JobStatus(text(b"status") or "")
    result: Any = None
    if status is JobStatus.SUCCEEDED and b"result" in fields:
        result = _result(app, task, fields[b"result"])
    return JobDetails(
        id=job_id,
        task=task_name,
        status=status,
        attempts=_int(fields.get(b"attempts")) or 0,
        priority=text(b"priority"),
        args=args,
        kwargs=kwargs,
        headers=headers,
        enqueued_at=_time(fields.get(b"enqueued_ms")),
        started_at=_time(fields.get(b"started_ms")),
        finished_at=_time(fields.get(b"finished_ms")),
        due_at=_time(fields.get(b"due_ms")),
        result=result,
        error_type=text(b"error_type"),
        error=text(b"error"),
        traceback=text(b"traceback"),
        worker=text(b"worker"),
        duration_ms=_int(fields.get(b"duration_ms")),
    )


def _result(app: App, task: Task[Any, Any, Any] | None, raw: bytes) -> Any:
    try:
        value = app.serializer.loads(raw)
    except ValueError:
        return None
    returns = conversions(task.fn).result if task is not None else None
    if returns is None:
        return value
    try:
        return convert(value, returns)
    except ValueError:
        return value


def _int(raw: bytes | None) -> int | None:
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def _time(raw: bytes | None) -> dt.datetime | None:
    ms = _int(raw)
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
