"""Durable enqueues: an acknowledged enqueue has reached a replica (opt-in).

Redis replication is asynchronous: the master replies to the enqueue script
before its replicas have the write, so a failover in that window (Sentinel
promoting a replica after the master died) loses jobs whose enqueue had
returned. With ``Settings(durable=True)`` (or ``task.with_options(durable=True)``)
each enqueue call then sends ``WAIT durable_replicas timeout`` and, where the
master has AOF on and knows the command (Valkey; Redis 7.2+), ``WAITAOF 1 0
timeout`` (its own fsync), and returns only once they are confirmed. A batch
(``enqueue_many``) waits once, after its last write.

WAIT counts the writes of the connection it is sent on, so the whole enqueue
(the script calls, a unique key's rounds, a chain's parents check) runs on one
dedicated connection of the pool (``connection.held``): ``App.scripts``
hands out ``held`` scripts bound to it while the enqueue runs. redis-py's
pipelines take a connection of their own from the pool, so on that connection
a batch's script calls go one after the other (one round trip each, 100 jobs
per call) instead of pipelined.

When the replicas do not confirm in time, the enqueue raises ``NotDurable``:
the jobs ARE enqueued (nothing is rolled back, and they will run), but a
failover right now could lose them. What it does not buy, and why outcomes
(completions, acks, retries) are not waited on, is in docs/reliability.md.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from streamq.connection import held as held_connection
from streamq.errors import NotDurable, QueueFull
from streamq.scripts import Arg, Scripts

if TYPE_CHECKING:
    from streamq.app import App
    from streamq.job import Job
    from streamq.task import Task

RECHECK_S = 60.0
"""How long a server's "no WAITAOF here" (old server, AOF off) is believed before asking again."""

_HELD: ContextVar[tuple[App, Scripts] | None] = ContextVar("streamq_durable_scripts", default=None)


def wanted(app: App, task: Task[Any, Any, Any]) -> bool:
    """The call site's ``durable`` option, else the App's setting."""
    option = task.options.durable
    return app.settings.durable if option is None else option


def held(app: App) -> Scripts | None:
    """The scripts bound to this App's durable enqueue in progress, if one is."""
    current = _HELD.get()
    return current[1] if current is not None and current[0] is app else None


async def enqueue(app: App, send: Callable[[], Awaitable[list[Job[Any]]]]) -> list[Job[Any]]:
    """Run ``send`` (the enqueue) on one connection, then wait for the replicas."""
    async with held_connection(await app.node_redis()) as one:
        token = _HELD.set((app, _HeldScripts(one)))
        try:
            jobs = await send()
        except QueueFull as exc:  # the jobs that did go in are waited for too
            if exc.accepted:
                await confirm(app, one, exc.accepted)
            raise
        finally:
            _HELD.reset(token)
        await confirm(app, one, jobs)
    return jobs


class _HeldScripts(Scripts):
    """Scripts whose every call uses the one connection of a single-connection client."""

    async def run_many(
        self, calls: Sequence[tuple[str, tuple[Sequence[str], Sequence[Arg]]]]
    ) -> list[Any]:
        replies: list[Any] = []
        for name, (keys, args) in calls:
            try:
                replies.append(await self._call(name, keys, args))
            except ResponseError as exc:
                replies.append(exc)
        return replies


@dataclass(slots=True)
class _Fsync:
    """Whether this App's server takes ``WAITAOF 1 0`` (and since when we think not)."""

    usable: bool = True
    why_not: str = ""
    checked: float = 0.0


_FSYNC: weakref.WeakKeyDictionary[App, _Fsync] = weakref.WeakKeyDictionary()


async def confirm(app: App, connection: Redis, jobs: list[Job[Any]]) -> None:
    """WAIT (and WAITAOF) on ``connection``; NotDurable when short."""
    settings = app.settings
    wanted_replicas = settings.durable_replicas
    timeout_ms = max(1, round(settings.durable_timeout_s * 1000))
    fsync = _FSYNC.setdefault(app, _Fsync())
    if not fsync.usable and time.monotonic() - fsync.checked > RECHECK_S:
        fsync.usable = True  # a failover may have brought a master that has it
    # Not a pipeline: it would run on another connection, whose writes are not ours.
    execute: Callable[..., Awaitable[Any]] = connection.execute_command
    replicas = int(await execute("WAIT", wanted_replicas, timeout_ms))
    local: bool | None = None
    if fsync.usable:
        try:
            reply = await execute("WAITAOF", 1, 0, timeout_ms)
        except ResponseError as exc:
            # Redis 7.0 (no WAITAOF), or AOF off: WAIT alone (doctor says which).
            fsync.usable, fsync.why_not, fsync.checked = False, str(exc), time.monotonic()
        else:
            local = int(reply[0]) >= 1
    if replicas < wanted_replicas or local is False:
        raise NotDurable(
            [job.id for job in jobs], replicas, wanted_replicas,
            settings.durable_timeout_s, local,
        )  # fmt: skip


def fsync_note(app: App) -> str:
    """Why durable enqueues of this App wait without WAITAOF, or '' when they use it."""
    fsync = _FSYNC.get(app)
    return "" if fsync is None or fsync.usable else fsync.why_not
