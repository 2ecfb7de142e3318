"""Typed wrappers for the Lua scripts: one ``.lua`` file per operation.

Each script's header documents its KEYS, ARGV and reply; the wrapper here is
the Python side of that contract. Scripts that move work along (fetch, start,
complete, reclaim, promote, trim, ...) carry ``#!lua flags=allow-oom``: at
maxmemory (noeviction) Redis refuses new enqueues, but workers must still be
able to finish, ack and record the jobs already accepted, which is also what
frees memory again. ``enqueue`` and ``requeue`` have no such flag.

Scripts are called by SHA (EVALSHA). The SHA
is computed locally, so the first call needs no round trip; a NOSCRIPT reply
(a fresh or restarted server) loads every script once and retries the call.
Retrying is safe because every script is idempotent for the same arguments.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeAlias, cast

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from streamq.signing import KID_FIELD, Signer, as_bytes, sign_job

Arg: TypeAlias = str | bytes | int | float
Entry: TypeAlias = tuple[bytes, dict[bytes, bytes] | None]


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> Script:
        source = _expand(resources.files(__package__).joinpath(f"{name}.lua").read_text())
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())


_INCLUDE = re.compile(r"^--#include (\w+)$", re.MULTILINE)


def _expand(source: str, seen: frozenset[str] = frozenset()) -> str:
    """Each ``--#include <name>`` line replaced by ``include/<name>.lua``: Lua helpers
    that several scripts need, written once (a script cannot call another's). An
    include may include others; each is spliced once per script."""
    folder = resources.files(__package__).joinpath("include")
    done = set(seen)

    def splice(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in done:
            return ""
        done.add(name)
        return _expand(folder.joinpath(f"{name}.lua").read_text(), frozenset(done))

    return _INCLUDE.sub(splice, source)


NAMES = (
    "enqueue", "fetch", "start", "complete", "dead", "promote", "heartbeat", "reclaim",
    "drain", "prune_consumers", "requeue", "lease", "release", "trim", "progress", "lost",
    "bounce", "unique", "chain", "rate", "slot_acquire", "slot_release", "defer", "cron_mark",
    "cancel", "cancelled", "handover", "run_now",
)  # fmt: skip
_SCRIPTS = {name: Script.load(name) for name in NAMES}


ENQUEUE_EXPECTED = 12
"""Where ``enqueue_call`` puts ARGV[13], the job id the caller read from the unique
key, in its args: a unique enqueue calls again with it set (``streamq.unique``)."""


@dataclass(frozen=True, slots=True)
class UniqueArgs:
    """The unique-key part of an ``enqueue`` call (see enqueue.lua's header)."""

    mode: str
    """'key', 'throttle' or 'debounce'."""
    window_ms: int
    key: str
    holder_key: str
    """The job hash of ``expected`` (any key of the queue when there is none)."""
    expected: str = ""
    """The job id the caller last read from the key ('' for none)."""


@dataclass(slots=True)  # not frozen: built per job, and frozen init costs
class Outcome:
    """One finished job for ``complete``; ``status`` is 'succeeded' or 'failed'."""

    stream: str
    job_key: str
    msg_id: bytes
    deliveries: int
    job_id: str
    task: str
    attempt: int
    status: str
    """'succeeded', 'retry' or 'failed'."""
    result_or_error_type: bytes | str
    error: str
    traceback: str
    duration_ms: int
    retry_delay_ms: int = 0
    priority: str = ""
    result_ttl_ms: int = 0
    """How long the job hash is kept once final; 0: the call's ``result_ttl_ms``."""
    started_ms: int = 0
    """The job's "started" mark (epoch ms) when it was not written yet: ``complete``
    writes it with the outcome, as ``start`` would have (0: no mark)."""


@dataclass(slots=True)  # not frozen: built per job, and frozen init costs
class Started:
    """One fetched job for ``start``: the message it came from, and the job."""

    stream: str
    msg_id: bytes
    job_key: str
    job_id: str
    task: str
    attempt: int
    priority: str
    deliveries: int = 1


class Scripts:
    """The scripts, bound to one client."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def load_all(self) -> None:
        for script in _SCRIPTS.values():
            await self._redis.script_load(script.source)

    async def _call(self, name: str, keys: Sequence[str | bytes], args: Sequence[Arg]) -> Any:
        script = _SCRIPTS[name]
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load_all()
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)

    async def pipelined(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Arg]]]
    ) -> list[Any]:
        """Run many calls of one script in one round trip (not a transaction)."""
        replies = await self.run_many([(name, call) for call in calls])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def run_many(
        self, calls: Sequence[tuple[str, tuple[Sequence[str], Sequence[Arg]]]]
    ) -> list[Any]:
        """Calls of different scripts, in order, in one round trip (not a transaction).

        Each call's reply, or the exception it raised, in order.
        """
        if len(calls) == 1:
            name, (keys, args) = calls[0]
            try:
                return [await self._call(name, keys, args)]
            except ResponseError as exc:
                return [exc]
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, (keys, args) in calls:
                    # Not pipe.evalsha: redis-py's cluster pipeline blocks that
                    # method, yet routes the command itself by its keys.
                    pipe.execute_command("EVALSHA", _SCRIPTS[name].sha, len(keys), *keys, *args)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                await self.load_all()
                continue  # every script is safe to repeat, so running all again is too
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

    # -- one typed wrapper per script -------------------------------------------------

    @staticmethod
    def enqueue_call(
        *, stream: str, events: str, delayed: str, group: str, task: str, content_type: str,
        now_ms: int, priority: str, jobs: Sequence[tuple[str, str, bytes]],
        due_ms: int = 0, extra: Sequence[Arg] = (), max_pending: int = 0,
        all_streams: Sequence[str] = (), delay_ms: int = 0, unique: UniqueArgs | None = None,
        signer: Signer | None = None,
    ) -> tuple[list[str], list[Arg]]:  # fmt: skip
        """One script call enqueueing ``jobs``, each (job id, job hash key, payload).

        ``due_ms`` (epoch ms) or ``delay_ms`` (from the server's clock) later than
        the server's now puts the jobs in the delayed set. ``unique`` (one job
        only) makes the job the one live job of a unique key. A ``signer`` signs
        each entry (``kid`` among the extra fields, ``sig`` per job).
        """
        if signer is not None:
            extra = [*extra, KID_FIELD, signer.kid]
        keys = [stream, events, delayed, *(key for _, key, _ in jobs)]
        if max_pending:
            keys += all_streams
        mode, window_ms, expected = "", 0, ""
        if unique is not None:
            keys += [unique.key, unique.holder_key]
            mode, window_ms, expected = unique.mode, unique.window_ms, unique.expected
        args: list[Arg] = [
            group, task, content_type, now_ms, priority, due_ms, max_pending,
            len(jobs), len(extra), delay_ms, mode, window_ms, expected, *extra,
        ]  # fmt: skip
        if signer is None:
            for job_id, _, payload in jobs:
                args += [job_id, payload]
            return keys, args
        for job_id, _, payload in jobs:
            args += [job_id, payload, sign_job(
                signer, job_id=job_id, task=task, content_type=content_type, payload=payload,
                enq_ms=now_ms, extra=extra,
            )]  # fmt: skip
        if unique is not None:
            args.append(Scripts.replacement_signature(args, signer))
        return keys, args

    @staticmethod
    def replacement_signature(args: Sequence[Arg], signer: Signer) -> str:
        """The ``sig`` of a signed unique enqueue's one job (``enqueue_call`` args) under
        the id of the waiting job a debounce would replace (ARGV[13]; '' when none)."""
        expected = str(args[ENQUEUE_EXPECTED])
        if not expected:
            return ""
        e = int(args[8])
        return sign_job(
            signer, job_id=expected, task=str(args[1]), content_type=str(args[2]),
            payload=as_bytes(args[14 + e]), enq_ms=args[3], extra=args[13:13 + e],
        )  # fmt: skip

    async def enqueue(self, call: tuple[list[str], list[Arg]]) -> list[tuple[int, Any]]:
        """Per job: (1, stream id or b'delayed') added; (0, id) the job id already
        existed; (-1, depth) refused, the queue is full; for a unique key, (2, job
        id) held by that job, (3, job id) a debounce replaced that waiting job's
        arguments, (-3, job id) call again naming that job (``UniqueArgs.expected``)."""
        return [(int(code), value) for code, value in await self._call("enqueue", *call)]

    async def enqueue_many(
        self, calls: Sequence[tuple[list[str], list[Arg]]]
    ) -> list[tuple[int, Any]]:
        """Several ``enqueue`` calls in one round trip; the replies of all jobs in order."""
        replies = await self.pipelined("enqueue", calls)
        return [(int(code), value) for reply in replies for code, value in reply]

    async def fetch(
        self, streams: Sequence[str], group: str, consumer: str, count: int
    ) -> list[tuple[str, list[Entry]]]:
        reply = await self._call("fetch", streams, [group, consumer, count])
        return [(stream.decode(), [_entry(e) for e in entries]) for stream, entries in reply]

    @staticmethod
    def start_call(
        events: str, jobs: Sequence[Started], *, group: str, worker: str, now_ms: int
    ) -> tuple[list[str], list[Arg]]:
        """Mark fetched jobs running (only those still pending to ``worker``)."""
        keys = [events]
        args: list[Arg] = [now_ms, worker, group]
        for job in jobs:
            keys += [job.stream, job.job_key]
            args += [
                job.msg_id, job.job_id, job.task, job.attempt, job.priority, job.deliveries,
            ]  # fmt: skip
        return keys, args

    async def start(
        self, events: str, jobs: Sequence[Started], *, group: str, worker: str, now_ms: int
    ) -> int:
        """Returns how many jobs were marked (still ours, and not missing or final)."""
        call = self.start_call(events, jobs, group=group, worker=worker, now_ms=now_ms)
        return int(await self._call("start", *call))

    @staticmethod
    def complete_call(
        events: str, outcomes: Sequence[Outcome], *, delayed: str, dlq: str, group: str,
        consumer: str, now_ms: int, result_ttl_ms: int,
    ) -> tuple[list[str], list[Arg]]:  # fmt: skip
        keys = [events, delayed, dlq]
        args: list[Arg] = [group, consumer, now_ms, result_ttl_ms]
        for o in outcomes:
            keys += [o.stream, o.job_key]
            args += [
                o.msg_id, o.deliveries, o.job_id, o.task, o.attempt, o.status,
                o.result_or_error_type, o.error, o.traceback, o.duration_ms,
                o.retry_delay_ms, o.priority, o.result_ttl_ms, o.started_ms,
            ]  # fmt: skip
        return keys, args

    async def complete(
        self, events: str, outcomes: Sequence[Outcome], *, delayed: str, dlq: str, group: str,
        consumer: str, now_ms: int, result_ttl_ms: int,
    ) -> list[int]:  # fmt: skip
        """Per outcome: 1 recorded, 3 recorded and final with chained children waiting
        on the job, 2 recorded by an earlier run, 0 lost ownership."""
        call = self.complete_call(
            events, outcomes, delayed=delayed, dlq=dlq, group=group, consumer=consumer,
            now_ms=now_ms, result_ttl_ms=result_ttl_ms,
        )  # fmt: skip
        return [int(r) for r in await self._call("complete", *call)]

    async def dead(
        self, *, stream: str, dlq: str, events: str, job_key: str, group: str, consumer: str,
        msg_id: bytes, deliveries: int, reason: str, now_ms: int, result_ttl_ms: int,
        job_id: str | None, task: str | None, error_type: str = "PoisonMessage",
    ) -> bytes | None:  # fmt: skip
        """Returns the DLQ entry id, or None when the message is no longer ours."""
        reply = await self._call(
            "dead",
            [stream, dlq, events, job_key],
            [group, consumer, msg_id, deliveries, reason, now_ms, result_ttl_ms,
             job_id or "", task or "", error_type],
        )  # fmt: skip
        return None if reply == 0 else cast(bytes, reply)

    @staticmethod
    def _promote_args(
        mode: str, *, delayed: str, events: str, dlq: str, streams: Sequence[str],
        priorities: Sequence[str], limit: int, group: str,
        result_ttl_ms: int, jobs: Sequence[tuple[bytes, bytes]] = (),
    ) -> tuple[list[str | bytes], list[Arg]]:  # fmt: skip
        keys: list[str | bytes] = [delayed, events, dlq, *streams, *(key for _, key in jobs)]
        args: list[Arg] = [
            mode, limit, group, result_ttl_ms, len(priorities),
            *priorities, *(job_id for job_id, _ in jobs),
        ]  # fmt: skip
        return keys, args

    async def promote_peek(
        self, *, delayed: str, events: str, dlq: str, streams: Sequence[str],
        priorities: Sequence[str], limit: int, group: str,
        result_ttl_ms: int,
    ) -> list[bytes]:  # fmt: skip
        """The job ids of up to ``limit`` members due by the server's clock (b'' for a
        member without one)."""
        reply = await self._call(
            "promote",
            *self._promote_args(
                "peek", delayed=delayed, events=events, dlq=dlq, streams=streams,
                priorities=priorities, limit=limit, group=group,
                result_ttl_ms=result_ttl_ms,
            ),
        )  # fmt: skip
        return list(reply)

    async def promote_next_ms(
        self, *, delayed: str, events: str, dlq: str, streams: Sequence[str],
        priorities: Sequence[str], group: str,
    ) -> int | None:  # fmt: skip
        """Milliseconds until the earliest delayed member is due by the server's clock
        (0: due now); None when the delayed set is empty."""
        reply = await self._call(
            "promote",
            *self._promote_args(
                "next", delayed=delayed, events=events, dlq=dlq, streams=streams,
                priorities=priorities, limit=1, group=group, result_ttl_ms=0,
            ),
        )  # fmt: skip
        return None if int(reply) < 0 else int(reply)

    async def promote(
        self, *, delayed: str, events: str, dlq: str, streams: Sequence[str],
        priorities: Sequence[str], limit: int, group: str,
        result_ttl_ms: int, jobs: Sequence[tuple[bytes, bytes]],
    ) -> tuple[int, int, bool]:  # fmt: skip
        """Promote due members; ``jobs`` pairs each peeked job id with its hash key.

        Returns (promoted, dead-lettered, stopped early: call ``promote_peek`` again).
        """
        promoted, dead, stopped = await self._call(
            "promote",
            *self._promote_args(
                "move", delayed=delayed, events=events, dlq=dlq, streams=streams,
                priorities=priorities, limit=limit, group=group,
                result_ttl_ms=result_ttl_ms, jobs=jobs,
            ),
        )  # fmt: skip
        return int(promoted), int(dead), bool(stopped)

    async def heartbeat(
        self, streams: Sequence[str], group: str, consumer: str, ids: Sequence[tuple[int, bytes]]
    ) -> list[bool]:
        """``ids`` pairs a 0-based index into ``streams`` with a message id."""
        args: list[Arg] = [group, consumer]
        for index, msg_id in ids:
            args += [index + 1, msg_id]
        return [bool(r) for r in await self._call("heartbeat", streams, args)]

    async def reclaim_page(
        self, keys: Sequence[str], head: Sequence[Arg]
    ) -> tuple[str, list[tuple[bytes, bytes]]]:
        """One call of reclaim.lua's 'page' mode: (state, popped (message id, job id) pairs).

        ``keys``: stream, DLQ, events, gate, hand-out; ``head``: ARGV[2..] up to
        the task timeouts (see the script's header; ``streamq.worker.reclaim``
        builds both). State 'more': this caller's pass goes on, call again.
        """
        state, popped = await self._call("reclaim", keys, ["page", *head])
        return state.decode() if isinstance(state, bytes) else state, [
            (msg_id, job_id) for msg_id, job_id in popped
        ]

    async def reclaim_claim(
        self, keys: Sequence[str], head: Sequence[Arg], popped: Sequence[tuple[bytes, bytes]],
        job_prefix: str,
    ) -> list[tuple[bytes, dict[bytes, bytes], int, bytes]]:  # fmt: skip
        """Claim popped messages: (id, fields, delivery count, previous owner) of each taken.

        Each job hash (``job_prefix`` + job id, the key ``Keyspace.job`` spells)
        is passed in KEYS, where the claim indexes its 'reclaimed' event.
        """
        prefix = job_prefix.encode()
        all_keys: list[str | bytes] = list(keys)
        args: list[Arg] = ["claim", *head]
        for msg_id, job_id in popped:
            args += [msg_id, job_id]
            if job_id:
                all_keys.append(prefix + job_id)
        claimed = await self._call("reclaim", all_keys, args)
        return [
            (msg_id, _pairs(flat), int(count_), owner) for msg_id, flat, count_, owner in claimed
        ]

    async def drain(
        self, streams: Sequence[str], group: str, consumer: str, count: int,
        start_ids: Sequence[bytes | str],
    ) -> list[tuple[int, bytes, dict[bytes, bytes] | None, int]]:  # fmt: skip
        """Own pending messages as (0-based stream index, id, fields or None, deliveries)."""
        reply = await self._call("drain", streams, [group, consumer, count, *start_ids])
        return [
            (int(index) - 1, msg_id, _pairs(flat) or None, int(count_))
            for index, msg_id, flat, count_ in reply
        ]

    async def prune_consumers(
        self, stream: str, group: str, min_idle_ms: int, keep: str
    ) -> list[bytes]:
        """Remove consumers idle ``min_idle_ms`` with nothing pending; returns their names."""
        return list(await self._call("prune_consumers", [stream], [group, min_idle_ms, keep]))

    async def requeue(
        self, *, dlq: str, stream: str, job_key: str, events: str, dlq_id: bytes | str,
        group: str, now_ms: int, priority: str,
    ) -> bytes | None | tuple[str, str]:  # fmt: skip
        """The new stream id; None when the DLQ entry was already gone; or, when the
        script refused it (nothing written), (reason code, message)."""
        reply = await self._call(
            "requeue",
            [dlq, stream, job_key, events],
            [dlq_id, group, now_ms, priority],
        )
        if isinstance(reply, list):
            code, message = (r.decode() if isinstance(r, bytes) else str(r) for r in reply)
            return code, message
        return None if reply == 0 else cast(bytes, reply)

    async def trim(
        self, stream: str, *, min_id: str, maxlen: int, max_examine: int = 10_000,
        floor: str = "",
    ) -> tuple[int, str]:  # fmt: skip
        """Trim history, never past pending or unread entries, nor past ``floor`` (an
        entry id, '' for none); returns (removed, cut)."""
        removed, cut = await self._call("trim", [stream], [min_id, maxlen, max_examine, floor])
        return int(removed), cut.decode() if isinstance(cut, bytes) else str(cut)

    async def progress(
        self, *, job_key: str, events: str, percent: float, message: str, now_ms: int,
        job_id: str, task: str, attempt: int, worker: str,
        stream: str | None = None, group: str = "", msg_id: bytes | str = b"",
        deliveries: int = 0,
    ) -> bool:  # fmt: skip
        """Record progress; fenced on ``stream``'s PEL (owner ``worker``, ``deliveries``)
        when the stream is given, else only on the job's status."""
        keys = [job_key, events] if stream is None else [job_key, events, stream]
        reply = await self._call(
            "progress", keys,
            [repr(percent), message, now_ms, job_id, task, attempt, worker, group, msg_id,
             deliveries],
        )  # fmt: skip
        return bool(reply)

    async def lost(
        self, *, events: str, delayed: str, streams: Sequence[str], group: str,
        result_ttl_ms: int, safe_age_ms: int,
        jobs: Sequence[tuple[bytes, bytes]], mark: bool = True,
    ) -> list[bytes]:  # fmt: skip
        """Of ``jobs`` (job id, job hash key), those not final whose message is gone and
        whose last change is at least ``safe_age_ms`` old; ``mark`` makes them final
        ('dead', MessageLost) with a TTL and an event, else nothing is written."""
        if not jobs:
            return []
        keys: list[str | bytes] = [events, delayed, *streams, *(key for _, key in jobs)]
        args: list[Arg] = [
            group, result_ttl_ms, safe_age_ms, len(streams),
            "mark" if mark else "check", *(job_id for job_id, _ in jobs),
        ]  # fmt: skip
        return list(await self._call("lost", keys, args))

    async def bounce(
        self, *, stream: str, delayed: str, events: str, job_key: str, group: str,
        consumer: str, msg_id: bytes, deliveries: int, priority: str, max_bounces: int,
        base_delay_ms: int, max_delay_ms: int,
    ) -> tuple[int, int, int]:  # fmt: skip
        """Hand a message back for another worker: (1, bounces, delay ms) bounced,
        (-1, bounces, 0) past ``max_bounces`` (nothing written), (0, 0, 0) not ours."""
        reply = await self._call(
            "bounce", [stream, delayed, events, job_key],
            [group, consumer, msg_id, deliveries, priority, max_bounces, base_delay_ms,
             max_delay_ms],
        )  # fmt: skip
        values = [int(v) for v in reply] + [0, 0]
        return values[0], values[1], values[2]

    async def unique(self, held: Sequence[tuple[bytes | str, bytes, str]]) -> int:
        """``held``: (unique key, the job id it named, that job's hash key) each.
        Returns how many keys were given their remaining TTL or deleted."""
        keys: list[str | bytes] = []
        args: list[Arg] = []
        for key, job_id, job_key in held:
            keys += [key, job_key]
            args.append(job_id)
        return int(await self._call("unique", keys, args))

    async def chain(self, calls: Sequence[tuple[Sequence[str], Sequence[Arg]]]) -> list[Any]:
        """Calls of chain.lua (``streamq.chains`` builds them) in one round trip:
        each one's reply, or the exception it raised."""
        return await self.run_many([("chain", call) for call in calls])

    async def rate(
        self, *, limit_key: str, job_key: str, interval_us: float, burst: int, attempt: int
    ) -> tuple[bool, int]:
        """(may start now, its slot in server ms): a GCRA check that reserves a slot."""
        allowed, slot_ms = await self._call(
            "rate", [limit_key, job_key], [repr(interval_us), burst, attempt]
        )
        return bool(allowed), int(slot_ms)

    async def slot_acquire(
        self, slots: Sequence[str], holder: str, ttl_ms: int, capacities: Sequence[int]
    ) -> int:
        """0: a slot of every zset taken (or renewed); i > 0: none taken, ``slots[i-1]`` full."""
        return int(await self._call("slot_acquire", slots, [holder, ttl_ms, *capacities]))

    async def slot_release(
        self, *, events: str, delayed: str, slots: Sequence[str], parked: Sequence[str],
        holder: str,
    ) -> int:  # fmt: skip
        """Give the slots back; wakes one parked job per zset. Returns how many woke."""
        keys = [events, delayed, *slots, *parked]
        return int(await self._call("slot_release", keys, [holder, len(slots)]))

    async def defer(
        self, *, stream: str, delayed: str, events: str, job_key: str, parked: str | None,
        group: str, consumer: str, msg_id: bytes, deliveries: int, priority: str,
        reason: str, due_ms: int, base_delay_ms: int, max_delay_ms: int, jitter: float,
        detail: str,
    ) -> tuple[int, int, int, int]:  # fmt: skip
        """Hand a limited job back to the delayed set: (1, due ms, deferrals, ms until
        due), or (0, 0, 0, 0) when the message is not ours any more (nothing written)."""
        keys = [stream, delayed, events, job_key, *([parked] if parked else [])]
        reply = await self._call(
            "defer", keys,
            [group, consumer, msg_id, deliveries, priority, reason, due_ms, base_delay_ms,
             max_delay_ms, repr(jitter), detail],
        )  # fmt: skip
        values = [int(v) for v in reply] + [0, 0, 0]
        return values[0], values[1], values[2], values[3]

    async def cancel(
        self, *, events: str, delayed: str, cancels: str, streams: Sequence[str], group: str,
        result_ttl_ms: int, requests_ttl_ms: int, waiting_only: bool, by: str,
        jobs: Sequence[tuple[str, str]], task_ttl_ms: Mapping[str, int], max_job_ttl_ms: int,
    ) -> list[str]:  # fmt: skip
        """Cancel ``jobs`` (job id, job hash key); per job 'cancelled', 'requested',
        'skipped', 'final/<status>' or 'missing' (see ``cancel.lua``).

        ``waiting_only`` leaves delivered jobs alone instead of asking their
        worker to stop them (``queue empty``). A cancelled job's hash lives its
        entry's own result TTL (at most ``max_job_ttl_ms``), else its task's in
        ``task_ttl_ms``, else ``result_ttl_ms``.
        """
        if not jobs:
            return []
        keys = [events, delayed, cancels, *streams, *(key for _, key in jobs)]
        args: list[Arg] = [
            group, result_ttl_ms, requests_ttl_ms, len(streams),
            "waiting" if waiting_only else "cancel", by, json.dumps(dict(task_ttl_ms)),
            max_job_ttl_ms, *(job_id for job_id, _ in jobs),
        ]  # fmt: skip
        reply = await self._call("cancel", keys, args)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in reply]

    async def run_now(
        self, *, delayed: str, events: str, streams: Sequence[str], priorities: Sequence[str],
        group: str, by: str, jobs: Sequence[tuple[str, str]],
    ) -> list[str]:  # fmt: skip
        """Move delayed ``jobs`` (job id, job hash key) into their streams now; per job
        'moved', 'missing', 'final/<status>', 'not-delayed' or 'corrupt' (run_now.lua)."""
        if not jobs:
            return []
        keys = [delayed, events, *streams, *(key for _, key in jobs)]
        args: list[Arg] = [group, len(streams), by, *priorities, *(job_id for job_id, _ in jobs)]
        reply = await self._call("run_now", keys, args)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in reply]

    async def cancelled(
        self, *, stream: str, events: str, job_key: str, cancels: str, group: str,
        consumer: str, msg_id: bytes, deliveries: int, job_id: str, task: str, attempt: int,
        now_ms: int, result_ttl_ms: int, duration_ms: int,
    ) -> int:  # fmt: skip
        """Record a running job stopped on request: 1 recorded, 2 recorded by an
        earlier run, 0 the message is no longer ours (fenced like ``complete``)."""
        reply = await self._call(
            "cancelled", [stream, events, job_key, cancels],
            [group, consumer, msg_id, deliveries, job_id, task, attempt, now_ms,
             result_ttl_ms, duration_ms],
        )  # fmt: skip
        return int(reply)

    async def lease(self, key: str, token: str, ttl_ms: int) -> bool:
        return bool(await self._call("lease", [key], [token, ttl_ms]))

    async def release(self, key: str, token: str) -> bool:
        return bool(await self._call("release", [key], [token]))

    async def cron_mark(self, cron: str, name: str, through_ms: int, state: str) -> bool:
        """Record ``state`` for schedule ``name`` unless a record as far or further is there."""
        return bool(await self._call("cron_mark", [cron], [name, through_ms, state]))

    async def handover(
        self, *, stream: str, events: str, job_prefix: str, group: str, dead: str, to: str,
        now_ms: int, messages: Sequence[tuple[bytes, bytes]],
    ) -> list[bytes]:  # fmt: skip
        """Give ``dead``'s pending ``messages`` ((id, job id), job id b'' for none) to ``to``.

        Only entries ``dead`` still owns move (handover.lua); returns their ids.
        """
        keys: list[str | bytes] = [stream, events]
        args: list[Arg] = [group, dead, to, now_ms]
        prefix = job_prefix.encode()
        for msg_id, job_id in messages:
            args += [msg_id, job_id]
            if job_id:
                keys.append(prefix + job_id)
        return list(await self._call("handover", keys, args))


def _pairs(flat: Sequence[Any] | None) -> dict[bytes, bytes]:
    if not flat:
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _entry(raw: list[Any]) -> Entry:
    msg_id, flat = raw[0], raw[1]
    if not flat:
        return msg_id, None
    return msg_id, dict(zip(flat[::2], flat[1::2], strict=True))
