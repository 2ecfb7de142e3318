"""Retries: a flaky handler succeeds on its third attempt; other failures do not retry.

A handler that raises is retried up to ``max_retries`` times, after a random
delay up to ``backoff_base * 2**(attempt-1)`` seconds (full jitter, capped at
``backoff_cap``). ``retry_on`` picks which exceptions are worth another try;
``raise Retry(delay=...)`` lets the handler choose the delay (a rate limit's
Retry-After). When the retries are spent, the job is failed and its last error
lands in the DLQ. The delays here are tiny so the example finishes quickly.

Run it with ``python examples/flaky_retries.py`` (``$STREAMQ_REDIS_URL`` or
the embedded server; ``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name).
"""

from __future__ import annotations

import os
import sys

import anyio

from streamq import (
    App,
    DeadLetters,
    JobFailed,
    Retry,
    Settings,
    Worker,
    configure_logging,
    current_job,
)

app = App(
    os.environ.get("STREAMQ_EXAMPLE_QUEUE", "retries-example"),
    # A retry waits in the delayed set until the janitor moves it back to its
    # stream, once per janitor interval (default 1 s); 0.1 s keeps this demo short.
    # Settings.from_env still reads $STREAMQ_REDIS_URL and friends.
    settings=Settings.from_env(janitor_interval_s=0.1),
)
NETWORK_ERRORS = (ConnectionError, TimeoutError)


@app.task(
    name="fetch_rates", max_retries=4, backoff_base=0.05, backoff_cap=0.5, retry_on=NETWORK_ERRORS
)
async def fetch_rates(currency: str) -> dict[str, float | int]:
    attempt = current_job().attempt  # 1 on the first run, 2 on the first retry, ...
    if attempt < 3:
        raise ConnectionError(f"rates service unreachable (attempt {attempt})")
    return {"currency_eur": 0.92 if currency == "USD" else 1.0, "attempt": attempt}


@app.task(name="post_webhook", max_retries=2)
async def post_webhook(url: str) -> int:
    if current_job().attempt == 1:
        # The server answered 429 with Retry-After: wait that long, not the backoff.
        raise Retry(delay=0.2, reason="429 Too Many Requests")
    return 200


@app.task(name="parse_invoice", max_retries=3, backoff_base=0.05, retry_on=NETWORK_ERRORS)
async def parse_invoice(text: str) -> float:
    # A ValueError is a bug or bad input, not bad luck: it is not in retry_on,
    # so the first failure is final.
    return float(text)


@app.task(name="sync_crm", max_retries=2, backoff_base=0.05, retry_on=NETWORK_ERRORS)
async def sync_crm(customer: str) -> None:
    raise ConnectionRefusedError(f"CRM refused the connection for {customer}")


async def main() -> int:
    # Retries log warnings and final failures errors; this example prints its own summary.
    configure_logging(json=False, level="critical")
    async with app:
        rates = await fetch_rates.enqueue("USD")
        webhook = await post_webhook.enqueue("https://example.com/hook")
        invoice = await parse_invoice.enqueue("12,50")
        crm = await sync_crm.enqueue("acme")
        # Burst mode also waits for retries in the delayed set.
        await Worker(app, concurrency=10, burst=True).run()

        ok = True
        result = await rates.result(timeout=10)
        print(f"fetch_rates -> {result}")
        ok &= result["attempt"] == 3
        print(f"post_webhook -> {await webhook.result(timeout=10)} after a Retry(delay=0.2)")
        for job, expected_attempts in ((invoice, 1), (crm, 3)):
            try:
                await job.result(timeout=10)
                ok = False
            except JobFailed as exc:
                attempts = int((await job.info())["attempts"])
                print(f"{job.task} failed after {attempts} attempt(s): {exc.error_type}")
                ok &= attempts == expected_attempts
        # The DLQ keeps earlier runs' entries too: pick this run's by job id.
        ours = {invoice.id, crm.id}
        dead = sorted([str(d.task) async for d in DeadLetters(app).iter() if d.job_id in ours])
        print(f"in the DLQ: {', '.join(dead)}")
        ok &= dead == ["parse_invoice", "sync_crm"]
    if not ok:
        print("the retries did not go as described")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
