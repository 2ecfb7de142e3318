"""Moving due delayed jobs into their streams (``scripts/promote.lua``).

The janitor does it every pass and whenever the earliest delayed job falls
due (``streamq.janitor``). A worker does it too: at once when its finished
job woke a job parked on a concurrency limit (``worker.limited``), and when
a retry or rate deferral it recorded falls due before the janitor's next
wake (``worker.soon``). Promotion is safe to run
from several places at the same time: each member leaves the delayed set and
enters its stream in one script, so no member is promoted twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamq.keys import GROUP

if TYPE_CHECKING:
    from streamq.app import App

BATCH = 500
"""Members per round (one peek and one move call)."""
ROUNDS = 100
"""Rounds per call at most, so a flood of new due members cannot hold it."""


async def promote_due(app: App, *, rounds: int = ROUNDS) -> tuple[int, int]:
    """Move every due delayed job into its stream: (promoted, dead-lettered).

    Each round peeks at the due members' job ids, then promotes them with
    their job hashes (a script touches only the keys it is given). A round
    stops early when a member became due after the peek; the next round
    takes it.
    """
    scripts = await app.scripts()
    settings, keys = app.settings, app.keys
    ttl_ms = int(settings.result_ttl_s * 1000)
    key_base = keys.job("").encode()
    total = dead = 0
    for _ in range(rounds):
        ids = await scripts.promote_peek(
            delayed=keys.delayed, events=keys.events, dlq=keys.dlq, streams=app.streams,
            priorities=settings.priorities, limit=BATCH, group=GROUP, result_ttl_ms=ttl_ms,
        )  # fmt: skip
        if not ids:
            break
        # Ids as bytes: one that is not UTF-8 still names its own hash.
        jobs = [(job_id, key_base + job_id) for job_id in dict.fromkeys(ids) if job_id]
        moved, died, stopped = await scripts.promote(
            delayed=keys.delayed, events=keys.events, dlq=keys.dlq, streams=app.streams,
            priorities=settings.priorities, limit=BATCH, group=GROUP, result_ttl_ms=ttl_ms,
            jobs=jobs,
        )  # fmt: skip
        total += moved
        dead += died
        if not stopped and len(ids) < BATCH:
            break
    return total, dead
