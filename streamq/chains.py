"""Chains: a job that runs only once its parents succeeded.

``await task_b.with_options(after=[job_a]).enqueue(...)`` adds b as
``deferred``: it waits beside the queue (the ``deferred`` hash), listed
under each live parent. The janitor (``release_children``, every pass)
looks at the parents that have waiting children, oldest first and in
bounded steps, and settles each child whose parents are all final: queued
when every parent succeeded; to the DLQ, with a reason naming the parent,
when one ended failed, dead or cancelled (or its outcome expired unseen).
A child therefore starts at most one janitor interval after its last
parent succeeded. Deliberately small: parents by id, no general workflow
engine, no results passed along (a child reads its parent's with
``app.job(id).result()``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from streamq.errors import JobNotFound
from streamq.keys import GROUP
from streamq.scripts import Arg
from streamq.signing import KID_FIELD, SIG_FIELD, sign_job

if TYPE_CHECKING:
    from streamq.app import App

RELEASE_PARENTS = 200
"""Parents looked at per janitor pass; the rest wait for the next passes."""
PARENT_STATUSES_FINAL = frozenset({b"succeeded", b"failed", b"dead", b"cancelled"})


def _head(app: App, mode: str, child: str, parents: Sequence[str]) -> tuple[list[str], list[Arg]]:
    keys = [app.keys.events, app.keys.dlq, app.keys.deferred, app.keys.parents, *app.streams,
            app.keys.job(child)]  # fmt: skip
    for parent in parents:
        keys += [app.keys.job(parent), app.keys.children(parent)]
    priorities = app.settings.priorities
    args: list[Arg] = [
        mode, GROUP, int(time.time() * 1000), int(app.settings.result_ttl_s * 1000),
        len(priorities), *priorities, child, len(parents), *parents,
    ]  # fmt: skip
    return keys, args


async def enqueue_after(
    app: App,
    task: str,
    priority: str,
    parents: Sequence[str],
    jobs: Sequence[tuple[tuple[str, str, bytes], Sequence[Arg]]],
) -> None:
    """Enqueue each (job id, hash key, payload) with its extra entry fields after
    ``parents``, one script call per job in one round trip.

    Raises JobNotFound naming a parent that has no job hash (never enqueued, or
    its outcome expired): nothing is written for the child it refused.
    """
    scripts = await app.scripts()
    calls: list[tuple[Sequence[str], Sequence[Arg]]] = []
    signer = app.signer
    for (child, _, payload), extra in jobs:
        keys, args = _head(app, "add", child, parents)
        if signer is not None:  # the entry chain.lua builds, signed (enq_ms: ARGV[3])
            extra = [*extra, KID_FIELD, signer.kid]
            content_type = app.serializer.content_type
            sig = sign_job(
                signer, job_id=child, task=task, content_type=content_type,
                payload=payload, enq_ms=args[2], extra=extra,
            )  # fmt: skip
            extra = [*extra, SIG_FIELD, sig]
        args += [task, app.serializer.content_type, priority, payload, len(extra), *extra]
        calls.append((keys, args))
    for reply in await scripts.chain(calls):
        if isinstance(reply, Exception):
            raise reply
        code, value = reply
        if int(code) == -2:
            raise JobNotFound(value.decode() if isinstance(value, bytes) else str(value))


async def release_children(app: App, offset: int = 0) -> tuple[int, int]:
    """One bounded step: settle the children of final parents, looking at up to
    ``RELEASE_PARENTS`` parents from rank ``offset`` (oldest first). Returns the
    offset of the next step (0 after the last parent) and how many children were
    queued or dead-lettered.
    """
    redis = await app.redis()
    page = cast(
        list[bytes], await redis.zrange(app.keys.parents, offset, offset + RELEASE_PARENTS - 1)
    )
    if not page:
        return 0, 0
    done, settled = await settle_parents(app, [pid.decode(errors="replace") for pid in page])
    # Settled parents left the zset, so the next step starts at the first rank
    # this one did not look at, less the ones removed (a skipped parent is seen
    # again after the wrap-around).
    next_offset = 0 if len(page) < RELEASE_PARENTS else offset + len(page) - len(done)
    return next_offset, settled


async def settle_parents(app: App, parents: Sequence[str]) -> tuple[list[str], int]:
    """Settle the waiting children of those of ``parents`` that are final: each
    child is queued (every parent succeeded), dead-lettered (one did not), or
    left waiting (another parent lives). Returns the final parents and how many
    children were queued or dead-lettered. The janitor calls it for the parents
    zset in steps; a worker for the jobs whose outcome it just recorded."""
    redis = await app.redis()
    scripts = await app.scripts()
    async with redis.pipeline(transaction=False) as pipe:
        for parent in parents:
            pipe.hget(app.keys.job(parent), "status")
        statuses = cast(list[bytes | None], await pipe.execute())
    done = [
        p
        for p, status in zip(parents, statuses, strict=True)
        if status is None or status in PARENT_STATUSES_FINAL
    ]
    settled = 0
    if done:
        async with redis.pipeline(transaction=False) as pipe:
            for parent in done:
                pipe.smembers(app.keys.children(parent))
            members = cast(list[set[bytes]], await pipe.execute())
        children = sorted({c.decode(errors="replace") for group in members for c in group})
        async with redis.pipeline(transaction=False) as pipe:
            for child in children:
                pipe.hget(app.keys.job(child), "after")
            afters = cast(list[bytes | None], await pipe.execute())
        calls = []
        for child, after in zip(children, afters, strict=True):
            own = [p for p in (after or b"").decode(errors="replace").split(",") if p]
            # Unlist the child from the final parents that listed it, whatever its hash says.
            listed = own or [p for p, group in zip(done, members, strict=True)
                             if child.encode() in group]  # fmt: skip
            calls.append(_head(app, "release", child, listed))
        for reply in await scripts.chain(calls):
            if isinstance(reply, Exception):
                raise reply
            settled += int(reply[0]) in (1, 4)
        # A final parent left with no children (all settled earlier): drop it.
        empty = [p for p, group in zip(done, members, strict=True) if not group]
        if empty:
            await scripts.chain([_head(app, "release", "", [p]) for p in empty])
    return done, settled
