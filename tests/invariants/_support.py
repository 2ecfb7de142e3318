"""Helpers shared by the invariant tests: fast settings, worker children, reading Redis back.

Every reading helper asks the server; nothing here keeps state of its own.
"""

from __future__ import annotations

import json
import socket
from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.asyncio import Redis

from streamq import App, Settings
from streamq.keys import GROUP
from tests.apps import ledger
from tests.apps.process import Child, streamq_child
from tests.conftest import subprocess_env

START_TIMEOUT_S = 20.0
"""A worker child's interpreter start and imports, on a loaded 2-core machine."""

FAST: dict[str, Any] = {"visibility_timeout_s": 0.5, "janitor_interval_s": 0.05}
"""Short timings shared by a test and its worker children."""


def ledger_app(name: str, redis_url: str, **settings: Any) -> App:
    """An App on queue ``name`` with ``tests.apps.ledger``'s tasks and short timings."""
    merged = {**FAST, **settings}
    return ledger.register(App(name, redis_url=redis_url, settings=Settings(**merged)))


def ledger_worker(
    app: App, redis_url: str, *options: str, **settings: Any
) -> AbstractAsyncContextManager[Child]:
    """``streamq worker tests.apps.ledger:app`` on ``app``'s queue, with the same timings."""
    merged = {**FAST, **settings}
    env = subprocess_env(
        redis_url, STREAMQ_TEST_QUEUE=app.name, STREAMQ_TEST_SETTINGS=json.dumps(merged)
    )
    return streamq_child(["worker", "tests.apps.ledger:app", *options], env)


def consumer_prefix(pid: int) -> bytes:
    """The start of the consumer name a worker process with this pid uses."""
    return f"{socket.gethostname()}:{pid}:".encode()


async def events(
    app: App, kind: str | None = None, job: str | None = None
) -> list[dict[bytes, bytes]]:
    """Lifecycle events of the queue, oldest first, optionally filtered."""
    redis: Redis = await app.redis()
    return [
        fields
        for _, fields in await redis.xrange(app.keys.events)
        if (kind is None or fields.get(b"kind") == kind.encode())
        and (job is None or fields.get(b"job") == job.encode())
    ]


async def pending_entries(app: App) -> list[dict[str, Any]]:
    """Every PEL entry of every priority stream (``message_id``, ``consumer``, ...)."""
    redis: Redis = await app.redis()
    out: list[dict[str, Any]] = []
    for priority in app.settings.priorities:
        stream = app.keys.stream(priority)
        if await redis.exists(stream):
            out += await redis.xpending_range(stream, GROUP, "-", "+", 1000)
    return out


async def dlq_entries(app: App) -> list[dict[bytes, bytes]]:
    redis: Redis = await app.redis()
    return [fields for _, fields in await redis.xrange(app.keys.dlq)]


async def delete_ledger(app: App) -> None:
    redis: Redis = await app.redis()
    await redis.delete(ledger.ledger_key(app.name))
