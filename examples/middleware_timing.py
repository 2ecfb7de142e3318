"""Middleware and a lifespan: structured timing, error reporting and a tenant header.

- The **lifespan** opens a client once per worker (a stand-in for an HTTP
  client or a DB pool) and closes it after the worker's last job; handlers
  reach it through ``current_job().state_as(Resources)``, with no global.
- ``TenantHeader`` (producer side) stamps each job with the tenant of the
  request that enqueued it, read from a context variable, as a job header.
- ``Timing`` writes one JSON line per job run: task, tenant, attempt, how it
  ended and how long it took (handler and inner middleware).
- ``ErrorReporter`` reports each failure Sentry-style, tagged with the job's
  task, attempt and headers. Here the reports are kept in a list; with
  sentry-sdk, ``report`` would be::

      with sentry_sdk.new_scope() as scope:
          scope.set_tags(tags)
          sentry_sdk.capture_exception(exc)

Run it with ``python examples/middleware_timing.py`` (``$STREAMQ_REDIS_URL``
or the embedded server; ``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name).
The same ``app`` serves ``streamq worker examples.middleware_timing:app``.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from streamq import App, JobContext, JobFailed, Middleware, Task, Worker, configure_logging
from streamq import current_job as job


@dataclass
class RatesClient:
    """Stands in for an HTTP client: opened once per worker, shared by every job."""

    rates: dict[str, float]
    requests: int = 0
    closed: bool = False

    async def rate(self, currency: str) -> float:
        if self.closed:
            raise RuntimeError("the client is closed")
        self.requests += 1
        await anyio.sleep(0.01)  # the round trip
        return self.rates[currency]  # KeyError for an unknown currency


@dataclass
class Resources:
    rates: RatesClient


@asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[Resources]:
    client = RatesClient({"EUR": 0.92, "GBP": 0.79})
    print("lifespan: rates client opened")
    try:
        yield Resources(client)
    finally:
        client.closed = True
        print(f"lifespan: rates client closed after {client.requests} requests")


tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)


class TenantHeader(Middleware):
    """Producer side: the enqueueing request's tenant travels with the job."""

    async def on_enqueue(
        self,
        task: Task[Any, Any, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> Mapping[str, str]:
        current = tenant.get()
        return headers if current is None else {**headers, "tenant": current}


class Timing(Middleware):
    """One structured line per job run; ``emit`` takes a JSON-ready dict."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit

    @asynccontextmanager
    async def around(self, ctx: JobContext) -> AsyncIterator[None]:
        started = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = f"error:{type(exc).__name__}"
            raise
        finally:
            self.emit(
                {
                    "event": "job", "task": ctx.task, "job_id": ctx.job_id,
                    "tenant": ctx.headers.get("tenant"), "attempt": ctx.attempt,
                    "outcome": outcome, "ms": round(1000 * (time.perf_counter() - started), 2),
                }
            )  # fmt: skip


@dataclass
class ErrorReporter(Middleware):
    """Sentry-style: every failure, tagged with the job it came from."""

    reports: list[tuple[BaseException, dict[str, str]]] = field(default_factory=list)

    async def on_error(self, ctx: JobContext, exc: BaseException) -> None:
        tags = {"task": ctx.task, "attempt": str(ctx.attempt), **ctx.headers}
        self.report(exc, tags)

    def report(self, exc: BaseException, tags: dict[str, str]) -> None:
        self.reports.append((exc, tags))


reporter = ErrorReporter()
app = App(
    os.environ.get("STREAMQ_EXAMPLE_QUEUE", "middleware-example"),
    lifespan=lifespan,
    # The first middleware is the outermost: Timing's time includes the reporter's.
    middleware=[TenantHeader(), Timing(lambda line: print(json.dumps(line))), reporter],
)


@app.task(name="fetch_price", max_retries=0)
async def fetch_price(currency: str, amount: float) -> float:
    rates = job().state_as(Resources).rates
    return round(amount * await rates.rate(currency), 2)


async def main() -> int:
    # The worker logs failures itself; this example prints its own lines.
    configure_logging(json=False, level="critical")
    async with app:
        tenant.set("acme")  # as a web app's middleware would, per request
        acme = await fetch_price.enqueue("EUR", 100.0)
        tenant.set("globex")
        globex = await fetch_price.enqueue("XXX", 5.0)
        # One slot, so the jobs run (and print) in the order they were enqueued.
        await Worker(app, concurrency=1, burst=True).run()

        ok = True
        price = await acme.result(timeout=10)
        print(f"acme: 100 EUR -> {price}")
        ok &= price == 92.0
        try:
            await globex.result(timeout=10)
            ok = False
        except JobFailed as exc:
            print(f"globex: failed with {exc.error_type}")
        for exc, tags in reporter.reports:
            print(f"reported {type(exc).__name__}: {exc} tags={tags}")
        ok &= [tags.get("tenant") for _, tags in reporter.reports] == ["globex"]
    if not ok:
        print("the middleware did not see what it should have")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
