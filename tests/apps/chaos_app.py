"""An App for chaos-test worker subprocesses, with an execution ledger outside streamq's keys.

``python -m streamq worker tests.apps.chaos_app:app`` imports this module in a
child process. Everything it needs comes from environment variables (the
names below), so each chaos test drives its own queue, timings and ledger:

- ``STREAMQ_REDIS_URL`` (read by streamq) and ``STREAMQ_TEST_QUEUE``: where the jobs are;
- ``STREAMQ_CHAOS_VIS_S`` / ``STREAMQ_CHAOS_JANITOR_S``: visibility timeout and janitor interval;
- ``STREAMQ_CHAOS_TRIM_S`` (optional): the janitor's trim interval;
- ``STREAMQ_CHAOS_LEDGER_URL`` / ``STREAMQ_CHAOS_LEDGER_KEY``: the ledger hash. Each
  handler that runs to the end does ``HINCRBY ledger <key> 1`` there, under a
  key prefix streamq never writes (and, for the Redis-restart scenario, on a
  second server), so the ledger says which job ran how many times whatever
  happens to streamq's own keys.

Handlers return the worker's pid, so a test can tell whose result was stored.
"""

from __future__ import annotations

import os

import anyio
from redis.asyncio import Redis

from streamq import App, Settings

WORK = "chaos.work"
HOLD = "chaos.hold"

QUEUE_ENV = "STREAMQ_TEST_QUEUE"
VIS_ENV = "STREAMQ_CHAOS_VIS_S"
JANITOR_ENV = "STREAMQ_CHAOS_JANITOR_S"
LEDGER_URL_ENV = "STREAMQ_CHAOS_LEDGER_URL"
LEDGER_KEY_ENV = "STREAMQ_CHAOS_LEDGER_KEY"
TRIM_ENV = "STREAMQ_CHAOS_TRIM_S"
"""How often the janitor trims history (retention itself is streamq's ``STREAMQ_RETENTION``)."""

EVENTS_MAXLEN = 2_000_000
"""Large enough that a full-size run keeps every lifecycle event for the analysis."""


def chaos_settings(
    url: str | None, visibility_s: float, janitor_s: float, trim_s: float | None = None
) -> Settings:
    """The settings both sides of a chaos test use (workers and the test's producers)."""
    return Settings.from_env(
        redis_url=url,
        visibility_timeout_s=visibility_s,
        janitor_interval_s=janitor_s,
        events_maxlen=EVENTS_MAXLEN,
        trim_interval_s=trim_s,  # None: streamq's default
    )


class Ledger:
    """``HINCRBY`` on a hash streamq never touches; connects on first use."""

    def __init__(self, url: str | None, key: str) -> None:
        self.url = url
        self.key = key
        self._client: Redis | None = None

    async def record(self, job_key: str) -> None:
        if self.url is None:
            return  # a producer-side App: its handlers never run
        if self._client is None:
            self._client = Redis.from_url(self.url)
        await self._client.hincrby(self.key, job_key, 1)


def register(app: App, ledger: Ledger) -> App:
    """Register the chaos tasks on ``app`` (the worker's App, or a test's producer App)."""

    @app.task(name=WORK)
    async def work(key: str, sleep_ms: int) -> int:
        await anyio.sleep(sleep_ms / 1000)
        await ledger.record(key)
        return os.getpid()

    @app.task(name=HOLD)
    async def hold(key: str, seconds: float) -> int:
        await anyio.sleep(seconds)
        await ledger.record(key)
        return os.getpid()

    return app


def _worker_app() -> App:
    env = os.environ
    trim = env.get(TRIM_ENV)
    settings = chaos_settings(
        None,
        float(env.get(VIS_ENV, "2")),
        float(env.get(JANITOR_ENV, "0.5")),
        None if trim is None else float(trim),
    )
    ledger = Ledger(
        env.get(LEDGER_URL_ENV) or env.get("STREAMQ_REDIS_URL"),
        env.get(LEDGER_KEY_ENV, "chaosledger:exec"),
    )
    return register(App(env.get(QUEUE_ENV, "chaos"), settings=settings), ledger)


app = _worker_app()
