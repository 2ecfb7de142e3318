"""The live demo's App, its four job kinds, and the worker process that runs them.

Every demo worker is a real process (``python -m streamq.demo_web.tasks``)
running ``streamq.Worker`` with concurrency 1, so a hang freezes exactly one
worker holding exactly one job. The handlers read the pool's settings
(latency, failure rate, hang rate) from the ``demo:config`` hash, cached for
half a second, so a change from the page applies without a restart.

A hang is real: the handler records it (``hung:<consumer>`` = the job id, and
the ``hung`` count, in the ``demo:state`` hash), then sends SIGSTOP to its own
process. Its heartbeat stops with it, so the job sits idle in the group's
PEL until another worker reclaims it after the visibility timeout.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import anyio

from streamq.app import App
from streamq.progress import current_job
from streamq.settings import Settings

PRIORITIES = ("high", "default", "low")
MAX_RETRIES = 3
JANITOR_INTERVAL_S = 0.5
CONFIG_CACHE_S = 0.5
RESULT_TTL_S = 3600.0


class DemoFailure(RuntimeError):
    """The failure the demo's failure rate injects."""


@dataclass(frozen=True, slots=True)
class Rates:
    latency_ms: int = 300
    failure_rate: float = 0.0
    hang_rate: float = 0.0

    @classmethod
    def parse(cls, raw: dict[bytes, bytes]) -> Rates:
        return cls(
            latency_ms=int(raw.get(b"latency_ms", b"300")),
            failure_rate=float(raw.get(b"failure_rate", b"0")),
            hang_rate=float(raw.get(b"hang_rate", b"0")),
        )


class RatesCache:
    """The pool's settings as this process last read them (at most ``CONFIG_CACHE_S`` old)."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._rates = Rates()
        self._read_at = -CONFIG_CACHE_S

    async def get(self) -> Rates:
        if time.monotonic() - self._read_at >= CONFIG_CACHE_S:
            redis = await self._app.redis()
            raw = await redis.hgetall(self._app.keys.demo("config"))
            self._rates = Rates.parse(cast(dict[bytes, bytes], raw))
            self._read_at = time.monotonic()
        return self._rates


_consumer = ""
"""This worker process's consumer name (set by ``main``); empty in the pool's process."""


def demo_app(
    queue: str,
    redis_url: str | None,
    *,
    visibility_timeout_s: float,
    prefix: str | None = None,
) -> App:
    """The demo App: the same in the pool (which enqueues) and in every worker process."""
    # Every replaced worker leaves a consumer behind: prune the idle ones within a minute.
    settings = Settings.from_env(
        redis_url=redis_url, janitor_interval_s=JANITOR_INTERVAL_S, consumer_idle_s=60.0
    )
    app = App(
        queue,
        redis_url=redis_url,
        priorities=PRIORITIES,
        prefix=prefix,
        result_ttl=RESULT_TTL_S,
        max_retries=MAX_RETRIES,
        visibility_timeout=visibility_timeout_s,
        settings=settings,
    )
    rates = RatesCache(app)

    async def work(kind: str) -> None:
        now = await rates.get()
        if random.random() < now.hang_rate:
            await _hang(app)
        await anyio.sleep(now.latency_ms / 1000)
        if random.random() < now.failure_rate:
            raise DemoFailure(f"{kind}: an injected failure (failure rate {now.failure_rate:g})")

    options: dict[str, Any] = {"max_retries": MAX_RETRIES, "backoff_base": 0.2, "backoff_cap": 2.0}

    @app.task(name="email", **options)
    async def email(to: str, subject: str) -> dict[str, str]:
        await work("email")
        return {"sent_to": to}

    @app.task(name="webhook", **options)
    async def webhook(url: str, payload: dict[str, Any]) -> dict[str, int]:
        await work("webhook")
        return {"status": 200}

    @app.task(name="thumbnail", **options)
    async def thumbnail(path: str, width: int, height: int) -> dict[str, str]:
        await work("thumbnail")
        return {"thumbnail": f"{path}.{width}x{height}.webp"}

    @app.task(name="invoice", **options)
    async def invoice(invoice_id: str, amount_cents: int) -> dict[str, str]:
        await work("invoice")
        return {"invoice": invoice_id, "state": "issued"}

    return app


async def _hang(app: App) -> None:
    """Record the hang, then freeze this whole process (the pool kills it later)."""
    redis = await app.node_redis()
    state = app.keys.demo("state")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(state, f"hung:{_consumer}", current_job().job_id)
        pipe.hincrby(state, "hung", 1)
        await pipe.execute()
    os.kill(os.getpid(), signal.SIGSTOP)


def demo_args(n: int, kind: str) -> list[tuple[Any, ...]]:
    """Small, realistic arguments for ``n`` jobs of ``kind``."""
    rng = random.Random()
    calls: list[tuple[Any, ...]] = []
    for _ in range(n):
        i = rng.randrange(100_000)
        if kind == "email":
            calls.append((f"user{i}@example.com", f"Your order #{i} has shipped"))
        elif kind == "webhook":
            calls.append((f"https://hooks.example.com/orders/{i}", {"event": "paid", "order": i}))
        elif kind == "thumbnail":
            calls.append((f"uploads/img-{i}.jpg", rng.choice((128, 256)), rng.choice((128, 256))))
        else:
            calls.append((f"INV-{i:06d}", rng.randrange(500, 250_000)))
    return calls


def _die_with_parent(parent: int | None) -> None:
    """On Linux, SIGKILL this process when the pool's process dies (even while stopped).

    The pool may die between starting this process and the ``prctl`` below (a
    Python start takes a few hundred ms): then no signal would ever come, so a
    parent that is already gone (``getppid`` is not the pool's pid) ends it now.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)


async def _serve(args: argparse.Namespace) -> None:
    from streamq.worker import Worker

    app = demo_app(args.queue, args.url, visibility_timeout_s=args.visibility, prefix=args.prefix)
    async with app:
        worker = Worker(
            app, concurrency=1, consumer=args.consumer, handle_signals=True, grace_s=5.0
        )
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            redis = await app.redis()
            await redis.hset(app.keys.demo("state"), f"ready:{args.consumer}", os.getpid())


def main(argv: Sequence[str] | None = None) -> None:
    """A demo worker process: ``python -m streamq.demo_web.tasks QUEUE CONSUMER --visibility S``."""
    global _consumer
    parser = argparse.ArgumentParser(prog="streamq-demo-worker")
    parser.add_argument("queue")
    parser.add_argument("consumer")
    parser.add_argument("--visibility", type=float, required=True)
    parser.add_argument("--url", default=None)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--parent", type=int, default=None)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    _consumer = args.consumer
    from streamq.logging import configure_logging

    configure_logging(json=False, level="error")
    anyio.run(_serve, args)


if __name__ == "__main__":
    main()
