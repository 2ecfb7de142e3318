"""An App for failure-injection tests: jobs that record each run outside streamq.

``streamq worker tests.apps.ledger:app`` imports this module in a child
process. Like ``tests.apps.slow``, the queue name comes from
``$STREAMQ_TEST_QUEUE`` and the URL from ``$STREAMQ_REDIS_URL``; short
timings come from ``$STREAMQ_TEST_SETTINGS`` (JSON keyword arguments for
``Settings``, e.g. ``{"visibility_timeout_s": 0.5}``), so the test and its
worker children agree on them.

Every task first counts its run in the *ledger*: a hash on the same server
but outside the queue's keys (``ledger_key``), one field per job tag, so a
test can tell how many times each job really ran even when the worker that
ran it was killed before it could record anything in streamq's own keys.
Results carry the pid of the process that ran the job, so a test can tell
whose result was kept.
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
from redis.asyncio import Redis

from streamq import App, Settings

SLEEP = "ledger.sleep"
EXIT = "ledger.exit"
STUCK_ONCE = "ledger.stuck_once"
SLOW_FIRST = "ledger.slow_first"

LEDGER_TTL_S = 600  # outlives any test; keeps the shared server tidy afterwards


def ledger_key(queue: str) -> str:
    """Not under ``streamq:{queue}:``: streamq never writes it, the key-leak check skips it."""
    return f"test-ledger:{queue}"


async def count_run(app: App, tag: str) -> int:
    """Add one run of ``tag`` to the ledger; returns how many runs it has now had."""
    redis: Redis = await app.redis()
    key = ledger_key(app.name)
    runs = int(await redis.hincrby(key, tag, 1))
    await redis.expire(key, LEDGER_TTL_S)
    return runs


async def runs(app: App) -> dict[str, int]:
    """Runs per job tag so far."""
    redis: Redis = await app.redis()
    raw: dict[bytes, bytes] = await redis.hgetall(ledger_key(app.name))
    return {k.decode(): int(v) for k, v in raw.items()}


def register(app: App) -> App:
    """Register this module's tasks on ``app`` (a worker's App or a test's producer)."""

    @app.task(name=SLEEP)
    async def sleep(tag: str, seconds: float) -> int:
        await count_run(app, tag)
        await anyio.sleep(seconds)
        return os.getpid()

    @app.task(name=EXIT)
    async def exit_process(tag: str) -> None:
        """The ``os._exit`` poison: the worker process dies without any handler error."""
        await count_run(app, tag)
        os._exit(1)

    @app.task(name=STUCK_ONCE)
    async def stuck_once(tag: str) -> int:
        """Hangs on its first run (to be cut off by a shutdown); later runs return at once."""
        if await count_run(app, tag) == 1:
            await anyio.sleep(3600)
        return os.getpid()

    @app.task(name=SLOW_FIRST)
    async def slow_first(tag: str, first_s: float, later_s: float) -> int:
        """Sleeps ``first_s`` on its first run and ``later_s`` on every later one."""
        runs = await count_run(app, tag)
        await anyio.sleep(first_s if runs == 1 else later_s)
        return os.getpid()

    return app


def settings_from_env() -> Settings:
    overrides: dict[str, Any] = json.loads(os.environ.get("STREAMQ_TEST_SETTINGS", "{}"))
    return Settings.from_env(**overrides)


app = register(App(os.environ.get("STREAMQ_TEST_QUEUE", "ledger"), settings=settings_from_env()))
