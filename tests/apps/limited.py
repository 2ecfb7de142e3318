"""An App for worker subprocesses with rate and concurrency limits.

``streamq worker tests.apps.limited:app`` imports this module in a child
process; its queue is ``$STREAMQ_TEST_QUEUE`` and its slot ttl
``$STREAMQ_TEST_SLOT_TTL`` (seconds). A test registers the same tasks on its
own App with ``register(app)`` to enqueue them (and to run an in-process
worker beside the children). Handlers that must show how many run at once
count themselves in ``running_key(queue)`` (outside the queue's keyspace,
with a TTL).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from streamq import App, Limit, Settings

RATED = "limited.rated"
PER_CUSTOMER = "limited.per_customer"
PAIR = "limited.pair"
SOLO = "limited.solo"
ONE_PER_CUSTOMER = "limited.one_per_customer"

RATE = "10/s"
BURST = 10


def running_key(queue: str, group: str = "") -> str:
    return f"test-limits:{queue}:running:{group}"


def seen_key(queue: str, group: str = "") -> str:
    """A list of how many (of ``group``) were running as each job started."""
    return f"test-limits:{queue}:seen:{group}"


def settings(slot_ttl_s: float = 2.0, **overrides: Any) -> Settings:
    """Fast promotion (deferred jobs come back on time) and a short slot ttl."""
    return Settings.from_env(janitor_interval_s=0.05, slot_ttl_s=slot_ttl_s, **overrides)


def register(app: App) -> App:
    """Register this module's tasks on ``app`` (a worker's App or a test's producer)."""

    @app.task(name=RATED, limit=Limit(rate=RATE, burst=BURST))
    async def rated(n: int) -> int:
        return n

    @app.task(name=PER_CUSTOMER, limit=Limit(rate="5/s", key="customer", burst=1))
    async def per_customer(customer: str, n: int) -> str:
        return f"{customer}{n}"

    @asynccontextmanager
    async def counting(group: str) -> AsyncIterator[None]:
        """Count the jobs of ``group`` running meanwhile (each start logs the count)."""
        redis = await app.redis()
        running, seen = running_key(app.name, group), seen_key(app.name, group)
        await redis.rpush(seen, int(await redis.incr(running)))
        for key in (running, seen):
            await redis.expire(key, 600)
        try:
            yield
        finally:
            await redis.decr(running)

    @app.task(name=PAIR, concurrency=2)
    async def pair(hold_s: float) -> None:
        async with counting(""):
            await anyio.sleep(hold_s)

    @app.task(name=ONE_PER_CUSTOMER, limit=Limit(key="customer", concurrency=1))
    async def one_per_customer(customer: str, hold_s: float) -> None:
        async with counting(customer), counting("all"):
            await anyio.sleep(hold_s)

    @app.task(name=SOLO, concurrency=1, max_retries=1)
    async def solo(hold_s: float) -> float:
        await anyio.sleep(hold_s)
        return hold_s

    return app


app = register(
    App(
        os.environ.get("STREAMQ_TEST_QUEUE", "limited"),
        settings=settings(float(os.environ.get("STREAMQ_TEST_SLOT_TTL", "2"))),
    )
)
