"""Cancelling jobs: one by id (``Job.cancel``), or every waiting job of a queue.

A job that waits (in its stream, unread, or in the delayed set) is cancelled
in one step by ``scripts/cancel.lua``: its message is removed, its status
becomes ``cancelled`` with a TTL, and a 'cancelled' event keeps the removed
message for the audit. A job a worker already holds cannot be stopped by a
script: the script records a request in the queue's cancels zset, which the
worker running the job polls (``streamq.worker.cancel``); the worker stops
the handler and records ``cancelled`` (``scripts/cancelled.lua``). Requests
nobody took up (the job finished first, or its worker ignored it) are
dropped by the janitor after ``REQUEST_MAX_AGE_S``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from streamq.envelope import delayed_fields
from streamq.keys import GROUP

if TYPE_CHECKING:
    from streamq.app import App

__all__ = ["CancelResult", "cancel_jobs", "drop_stale_requests", "empty_queue"]

REQUEST_MAX_AGE_S = 86_400.0
"""A cancel request older than this is dropped (janitor): the cancels zset stays bounded.
A job that starts again later (a retry whose backoff is longer) then runs."""
EMPTY_BATCH = 100
"""Jobs per ``cancel`` script call of ``empty_queue``: each call holds the server briefly."""


class CancelResult(enum.StrEnum):
    """What ``Job.cancel()`` did."""

    CANCELLED = "cancelled"
    """The job had not started; it never will (status ``cancelled``)."""
    REQUESTED = "requested"
    """A worker holds the job: it was asked to stop it, and records ``cancelled``
    (unless the handler finishes successfully first)."""
    ALREADY_FINAL = "already-final"
    """The job had already ended (succeeded, failed, dead or cancelled): nothing changed."""
    NOT_FOUND = "not-found"
    """No such job (never enqueued, or its hash expired)."""


def _result(reply: str) -> CancelResult:
    if reply == "cancelled":
        return CancelResult.CANCELLED
    if reply == "requested":
        return CancelResult.REQUESTED
    if reply.startswith("final/"):
        return CancelResult.ALREADY_FINAL
    return CancelResult.NOT_FOUND


async def cancel_jobs(
    app: App, job_ids: Iterable[str], *, by: str = "api"
) -> dict[str, CancelResult]:
    """Cancel jobs by id (``Job.cancel`` for many); ``by`` is recorded in the events."""
    ids = list(dict.fromkeys(job_ids))
    results: dict[str, CancelResult] = {}
    for i in range(0, len(ids), EMPTY_BATCH):
        chunk = ids[i : i + EMPTY_BATCH]
        replies = await _cancel(app, chunk, waiting_only=False, by=by)
        results.update(zip(chunk, map(_result, replies), strict=True))
    return results


async def _cancel(app: App, job_ids: Sequence[str], *, waiting_only: bool, by: str) -> list[str]:
    scripts = await app.scripts()
    return await scripts.cancel(
        events=app.keys.events, delayed=app.keys.delayed, cancels=app.keys.cancels,
        streams=app.streams, group=GROUP,
        result_ttl_ms=int(app.settings.result_ttl_s * 1000),
        requests_ttl_ms=int(REQUEST_MAX_AGE_S * 1000),
        waiting_only=waiting_only, by=by,
        jobs=[(job_id, app.keys.job(job_id)) for job_id in job_ids],
        task_ttl_ms=task_result_ttls_ms(app),
        max_job_ttl_ms=int(app.settings.max_job_result_ttl_s * 1000),
    )  # fmt: skip


def task_result_ttls_ms(app: App) -> dict[str, int]:
    """The result TTL (ms) of each of the App's tasks that sets its own."""
    return {
        name: max(1, int(task.options.result_ttl_s * 1000))
        for name, task in app.tasks.items()
        if task.options.result_ttl_s is not None
    }


async def empty_queue(app: App, *, task: str | None = None, batch: int = EMPTY_BATCH) -> int:
    """Cancel every job waiting in the queue (or only ``task``'s); returns how many.

    Waiting means not yet delivered: unread entries of the priority streams
    (after the group's last-delivered id) and members of the delayed set.
    Running jobs are never touched. Candidates are read in pages and each
    batch of ``batch`` goes to one script call that checks every job again
    and cancels it only if it still waits, so a job delivered meanwhile runs.
    Jobs enqueued after the call started are left.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch!r}")
    removed = 0
    for stream in app.streams:
        removed += await _empty_stream(app, stream, task, batch)
    removed += await _empty_delayed(app, task, batch)
    return removed


async def _empty_stream(app: App, stream: str, task: str | None, batch: int) -> int:
    redis = await app.redis()
    last = cast(list[tuple[bytes, Any]], await redis.xrevrange(stream, "+", "-", count=1))
    if not last:
        return 0
    end = last[0][0]
    start = "-"
    for group in await redis.xinfo_groups(stream):
        if _text(group.get("name")) == GROUP:
            start = "(" + _text(group.get("last-delivered-id"))
    removed = 0
    while True:
        page = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrange(stream, start, end, count=batch),
        )
        if not page:
            return removed
        ids = [
            fields[b"id"].decode(errors="replace")
            for _, fields in page
            if b"id" in fields and (task is None or fields.get(b"task") == task.encode())
        ]
        removed += await _cancel_waiting(app, ids)
        if len(page) < batch:
            return removed
        start = "(" + page[-1][0].decode()


async def _empty_delayed(app: App, task: str | None, batch: int) -> int:
    redis = await app.redis()
    removed = 0
    offset = 0  # members kept before this page: cancelled ones leave the set
    while True:
        members = cast(
            list[bytes], await redis.zrange(app.keys.delayed, offset, offset + batch - 1)
        )
        if not members:
            return removed
        ids = [job_id for m in members if (job_id := _member_job(m, task)) is not None]
        cancelled = await _cancel_waiting(app, ids)
        removed += cancelled
        offset += len(members) - cancelled
        if len(members) < batch:
            return removed


async def _cancel_waiting(app: App, job_ids: list[str]) -> int:
    if not job_ids:
        return 0
    replies = await _cancel(app, list(dict.fromkeys(job_ids)), waiting_only=True, by="empty")
    return sum(reply == "cancelled" for reply in replies)


def _member_job(member: bytes, task: str | None) -> str | None:
    """The job id of a delayed member of ``task`` (any task when None)."""
    fields = delayed_fields(member) or {}
    job_id = fields.get("id")
    if not isinstance(job_id, str) or (task is not None and fields.get("task") != task):
        return None
    return job_id


async def drop_stale_requests(app: App, max_age_s: float = REQUEST_MAX_AGE_S) -> int:
    """Remove cancel requests older than ``max_age_s`` (by the server's clock); how many."""
    redis = await app.node_redis()
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000
    cutoff = now_ms - int(max_age_s * 1000)
    return int(await redis.zremrangebyscore(app.keys.cancels, "-inf", f"({cutoff}"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
