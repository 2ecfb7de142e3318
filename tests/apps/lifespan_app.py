"""Apps with a lifespan, for worker subprocesses.

``streamq worker tests.apps.lifespan_app:app`` runs a worker whose lifespan
writes what it saw to the file ``$STREAMQ_TEST_MARKS``: ``entered`` on
startup and, on the way out, each job of the queue with its status at that
moment. ``hold`` runs until something is pushed to the list ``release_key(app)``.
``:broken`` is the same queue with a lifespan that fails on startup.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

import streamq
from streamq import App

HOLD = "lifespan.hold"
QUEUE = os.environ.get("STREAMQ_TEST_QUEUE", "lifespan")
MARKS = Path(os.environ.get("STREAMQ_TEST_MARKS", "lifespan-marks.txt"))


@dataclass
class Resources:
    pool: str


def release_key(application: App) -> str:
    """A list in the queue's keyspace: push to it to let a ``hold`` job finish."""
    return f"{application.settings.prefix}:{{{application.name}}}:test-release"


def mark(line: str) -> None:
    with MARKS.open("a") as f:
        f.write(line + "\n")


@asynccontextmanager
async def recorded(app: App) -> AsyncIterator[Resources]:
    mark("entered")
    yield Resources(pool="db-pool")
    redis = await app.redis()
    async for key in redis.scan_iter(match=app.keys.job_pattern()):
        status = await redis.hget(key, "status")
        mark(f"exit: {key.decode().rsplit(':', 1)[-1]}={(status or b'?').decode()}")


@asynccontextmanager
async def failing(app: App) -> AsyncIterator[None]:
    mark("entered")
    raise RuntimeError("database unreachable")
    yield  # pragma: no cover


def register(application: App) -> App:
    @application.task(name=HOLD)
    async def hold() -> str:
        redis = await application.redis()
        with anyio.fail_after(30):
            # Blocks of 1 s: well under the client's socket timeout.
            while not await redis.blpop([release_key(application)], timeout=1):
                pass
        return streamq.current_job().state_as(Resources).pool

    return application


app = register(App(QUEUE, lifespan=recorded))
broken = register(App(QUEUE, lifespan=failing))
