"""Running delayed jobs now: a scheduled job, or a retry waiting out its backoff.

``run_now`` moves each job's member of the delayed set into its priority
stream at once (``scripts/run_now.lua``), as the janitor's promote would at
its due time: status ``queued`` (a retry stays ``retrying`` and runs its next
attempt), a 'promoted' event that says who asked. A job no longer waiting
there (promoted meanwhile, running, cancelled, final) is left alone.

A job under a rate or concurrency limit (``streamq.limits``) runs early only
if its limit lets it: otherwise the worker defers it again like any limited
job, to the slot its limit reserves for it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING

from streamq.errors import ConfigError
from streamq.keys import GROUP

if TYPE_CHECKING:
    from streamq.app import App

__all__ = ["RunNowResult", "run_now"]

BATCH = 100
"""Jobs per script call: each call holds the server briefly."""


class RunNowResult(enum.StrEnum):
    """What ``run_now`` did with one job."""

    MOVED = "moved"
    """The job was in the delayed set; it is in its stream now and runs next."""
    NOT_DELAYED = "not-delayed"
    """The job is not waiting for a due time (queued or running already): nothing changed."""
    ALREADY_FINAL = "already-final"
    """The job had ended (succeeded, failed, dead or cancelled): nothing changed."""
    NOT_FOUND = "not-found"
    """No such job (never enqueued, or its hash expired)."""
    CORRUPT = "corrupt"
    """Its delayed entry cannot become a stream entry; the janitor dead-letters it when due."""


def _result(reply: str) -> RunNowResult:
    if reply == "moved":
        return RunNowResult.MOVED
    if reply.startswith("final/"):
        return RunNowResult.ALREADY_FINAL
    if reply == "missing":
        return RunNowResult.NOT_FOUND
    if reply == "corrupt":
        return RunNowResult.CORRUPT
    return RunNowResult.NOT_DELAYED


async def run_now(app: App, job_ids: Iterable[str], *, by: str = "api") -> dict[str, RunNowResult]:
    """Move delayed jobs into their streams now; per job id what happened.

    ``MOVED``: the job runs next. ``by`` is recorded in each 'promoted'
    event. Safe to call twice: the second call finds the jobs queued.

    Raises:
        ConfigError: a job id that is not a non-empty string.
    """
    ids = list(dict.fromkeys(job_ids))
    for job_id in ids:
        if not isinstance(job_id, str) or not job_id:
            raise ConfigError(f"a job id must be a non-empty string, got {job_id!r}")
    scripts = await app.scripts()
    results: dict[str, RunNowResult] = {}
    for i in range(0, len(ids), BATCH):
        chunk = ids[i : i + BATCH]
        replies = await scripts.run_now(
            delayed=app.keys.delayed, events=app.keys.events, streams=app.streams,
            priorities=app.settings.priorities, group=GROUP, by=by,
            jobs=[(job_id, app.keys.job(job_id)) for job_id in chunk],
        )  # fmt: skip
        results.update(zip(chunk, map(_result, replies), strict=True))
    return results
