"""Result waiters: one reader of the events stream per App, shared by every waiter.

A blocking ``XREAD`` holds its connection for the whole block (DESIGN.md), so
``job.result()`` must not read the events stream on a pooled connection of
its own: a thousand waiters would hold the whole pool, and enqueue and the
worker's heartbeat (which share it) would wait behind them; a starved
heartbeat lets a live job be stolen. Here every waiter of an App registers
its job id, and ONE connection (``connection.dedicated``) reads the events
stream while anyone waits; a final event for a job (succeeded, failed, dead,
cancelled) wakes that job's waiters, who then read the job hash.

Who reads: leader-follower, no background task. The App has no task group to
own a reader task, and a task started behind the caller's back would outlive
cancel scopes, swallow errors and tie the App to one event loop. Instead the
first waiter to wait becomes the leader and runs the XREAD loop in its own
task, for as long as it waits itself; the others sleep on an ``anyio.Event``.
When the leader leaves (its job finished, its timeout passed, it was
cancelled), it hands the role to another waiter, synchronously in a
``finally``, so a cancellation cannot leave the reader without a driver. The
cursor stays with the ``ResultWaiters``, not with the leader, so a handoff
loses no event. When the last waiter leaves, the connection goes back to the
pool. A cancelled XREAD drops its connection (redis-py disconnects on any
error mid-read), so the next leader never reads a stale reply.

No missed event: a waiter registers BEFORE it reads the job hash, and reads
the hash together with the id of the last event (one MULTI). Its cursor offer
sets where reading starts if nobody has read yet; once reading started the
cursor moves only forward without gaps. An event for the job written after
its hash read is therefore read after the registration and wakes it; one
written before shows in the hash it read.

Also: the leader re-reads the status of every waited-for job every
``RECHECK_S`` (events can be trimmed before anyone reads them, a hash can
expire), pipelined on the pool for a moment; a blocking read never exceeds a
third of the socket timeout; errors of the read reach the leader's caller (as
they reached every waiter before), and the next waiter takes over.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

import anyio
from redis.asyncio import Redis

from streamq.connection import dedicated

if TYPE_CHECKING:
    from streamq.app import App

FINAL_KINDS = frozenset({b"succeeded", b"failed", b"dead", b"cancelled"})
"""Event kinds after which a job's status may be final (``cancelled``: when it exists)."""
FINAL_STATUSES = frozenset({b"succeeded", b"failed", b"dead", b"cancelled"})
BLOCK_SLICE_S = 2.0
"""Longest blocking read; also capped at a third of the socket timeout."""
RECHECK_S = 2.0
"""How often the leader re-reads the status of every waited-for job."""
READ_COUNT = 1000
RECHECK_BATCH = 1000

_XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or b"0")


class Watch:
    """One waiter's registration: ``wait()`` returns when its job may be final."""

    __slots__ = ("_event", "_generation", "_owner", "every_event", "job", "woken")

    def __init__(
        self, owner: ResultWaiters, job: bytes, generation: int, every_event: bool = False
    ) -> None:
        self._owner = owner
        self.job = job
        self._generation = generation
        self.every_event = every_event
        """Woken by any event of the job (``Job.watch``), not only a final one."""
        self._event = anyio.Event()
        self.woken = False
        """An event (or a re-check) said the job may be final; cleared by ``wait``."""

    def _wake(self) -> None:
        self.woken = True
        self._event.set()

    def follow_from(self, last_event_id: bytes) -> None:
        """Offer the last event id read with the job hash as the reader's start."""
        self._owner._offer_cursor(self, last_event_id)

    async def wait(self, deadline: float | None) -> bool:
        """Until the job may be final (True) or ``deadline`` (monotonic) passes (False)."""
        return await self._owner._wait(self, deadline)


class ResultWaiters:
    """The events-stream reader shared by an App's ``Job.result()`` calls."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._by_job: dict[bytes, set[Watch]] = {}
        self._count = 0
        self._waiting: dict[Watch, None] = {}  # inside wait(), oldest first
        self._leader: Watch | None = None
        self._lead_scope: anyio.CancelScope | None = None
        self._client: Redis | None = None
        self._cursor: bytes | None = None
        self._reading = False  # reading started: offers no longer move the cursor
        self._next_recheck = 0.0
        self._generation = 0

    @property
    def waiting(self) -> int:
        """How many waiters are registered (tests and metrics)."""
        return self._count

    @asynccontextmanager
    async def watch(self, job_id: str, *, every_event: bool = False) -> AsyncIterator[Watch]:
        """Register a waiter for ``job_id`` for the body; register before reading the hash.

        ``every_event``: wake on every event of the job (progress, started, ...),
        not only on the final ones.
        """
        watch = Watch(self, job_id.encode(), self._generation, every_event)
        self._by_job.setdefault(watch.job, set()).add(watch)
        self._count += 1
        try:
            yield watch
        finally:
            client = self._leave(watch)
            if client is not None:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def aclose(self) -> None:
        """Wake every waiter (they raise RuntimeError) and give the connection back."""
        self._generation += 1
        watches = [w for ws in self._by_job.values() for w in ws]
        scope, client = self._lead_scope, self._client
        self._reset()
        for watch in watches:
            watch._event.set()
        if scope is not None:
            scope.cancel()  # the leader closes the connection once its read is over
        elif client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    # -- internals ---------------------------------------------------------------

    def _reset(self) -> None:
        self._by_job.clear()
        self._count = 0
        self._waiting.clear()
        self._leader = None
        self._lead_scope = None
        self._client = None
        self._cursor = None
        self._reading = False

    def _leave(self, watch: Watch) -> Redis | None:
        """Unregister; returns the connection to close if this was the last waiter."""
        if watch._generation != self._generation:
            return None  # closed meanwhile: the state was reset
        same_job = self._by_job.get(watch.job)
        if same_job is None or watch not in same_job:
            return None
        same_job.discard(watch)
        if not same_job:
            del self._by_job[watch.job]
        self._count -= 1
        self._waiting.pop(watch, None)
        if self._leader is watch:
            self._hand_off()
        if self._count:
            return None
        client = self._client
        self._reset()
        return client

    def _hand_off(self) -> None:
        """Give the reader role to a waiter inside wait() that is not about to return."""
        self._leader = None
        for candidate in self._waiting:
            if not candidate.woken:
                self._leader = candidate
                candidate._event.set()
                return

    def _offer_cursor(self, watch: Watch, last_id: bytes) -> None:
        if watch._generation != self._generation or self._reading:
            return
        if self._cursor is None or _order(last_id) < _order(self._cursor):
            self._cursor = last_id

    def _check_open(self, watch: Watch) -> None:
        if watch._generation != self._generation:
            job = watch.job.decode()
            raise RuntimeError(f"{self._app!r} was closed while waiting for job {job!r}")

    async def _wait(self, watch: Watch, deadline: float | None) -> bool:
        self._check_open(watch)
        self._waiting[watch] = None
        try:
            while not watch.woken:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if self._leader is None:
                    self._leader = watch
                if self._leader is watch:
                    await self._lead(watch, deadline)
                else:
                    with anyio.move_on_after(
                        None if deadline is None else deadline - time.monotonic()
                    ):
                        await watch._event.wait()
                self._check_open(watch)
                if watch._event.is_set():
                    watch._event = anyio.Event()  # consumed: a wake, or the reader role
            watch.woken = False
            return True
        finally:
            if watch._generation == self._generation:
                self._waiting.pop(watch, None)
                if self._leader is watch:
                    self._hand_off()

    async def _lead(self, watch: Watch, deadline: float | None) -> None:
        """Read the events stream for every waiter while ``watch`` waits and leads."""
        app = self._app
        events = app.keys.events
        slice_s = min(BLOCK_SLICE_S, app.settings.socket_timeout_s / 3)
        generation = self._generation
        # While this scope is set, the leader owns the connection: aclose()
        # cancels the scope and leaves closing the connection to the leader (a
        # connection must not go back to the pool in the middle of a read).
        scope = self._lead_scope = anyio.CancelScope()
        client: Redis | None = None
        try:
            with scope:
                if self._client is None:
                    redis = await app.node_redis()
                    if generation != self._generation:
                        return
                    self._client = dedicated(redis)
                client = self._client
                if self._cursor is None:  # nobody offered one (wait() without follow_from)
                    last = cast(list[tuple[bytes, object]], await client.xrevrange(events, count=1))
                    if self._cursor is None and generation == self._generation:
                        self._cursor = last[0][0] if last else b"0-0"
                if not self._reading:
                    self._next_recheck = time.monotonic() + RECHECK_S
                while not watch.woken and self._leader is watch:
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        return
                    if now >= self._next_recheck:
                        await self._recheck()
                        self._next_recheck = time.monotonic() + RECHECK_S
                        continue
                    block_s = min(slice_s, self._next_recheck - now)
                    if deadline is not None:
                        block_s = min(block_s, deadline - now)
                    self._reading = True
                    reply = cast(
                        _XReadReply,
                        await client.xread(
                            {events: self._cursor or b"0-0"},
                            count=READ_COUNT,
                            block=max(1, int(block_s * 1000)),
                        ),
                    )
                    if generation != self._generation:
                        return
                    self._dispatch(reply)
        finally:
            if generation != self._generation:
                if client is not None:
                    with anyio.CancelScope(shield=True):
                        await client.aclose()
            elif self._lead_scope is scope:
                self._lead_scope = None

    def _dispatch(self, reply: _XReadReply) -> None:
        for _stream, entries in reply or ():
            for entry_id, event in entries:
                self._cursor = entry_id
                watches = self._by_job.get(event.get(b"job", b""))
                if watches:
                    final = event.get(b"kind") in FINAL_KINDS
                    for watch in watches:
                        if final or watch.every_event:
                            watch._wake()

    async def _recheck(self) -> None:
        """Wake the waiters whose job is final or gone (a trimmed event, an expired hash)."""
        jobs = list(self._by_job)
        if not jobs:
            return
        generation = self._generation
        redis = await self._app.redis()
        keys = self._app.keys
        for start in range(0, len(jobs), RECHECK_BATCH):
            batch = jobs[start : start + RECHECK_BATCH]
            async with redis.pipeline(transaction=False) as pipe:
                for job in batch:
                    pipe.hget(keys.job(job.decode()), "status")
                statuses = cast(list[bytes | None], await pipe.execute())
            if generation != self._generation:
                return
            for job, status in zip(batch, statuses, strict=True):
                if status is None or status in FINAL_STATUSES:
                    for watch in self._by_job.get(job, ()):
                        watch._wake()
