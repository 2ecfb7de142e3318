"""Dead letters: a job that failed for good waits in the DLQ until you requeue it.

A handler fails here because of a bug (a currency it has no rate for), so
retrying cannot help: the job fails at once and lands in the queue's DLQ
with its error and traceback. After the fix is deployed, requeueing puts it
back in its priority stream as a fresh first attempt, under the same job id.
The same steps from a shell:

    streamq dlq list examples.dlq_requeue:app
    streamq dlq show examples.dlq_requeue:app <entry id>
    streamq dlq requeue examples.dlq_requeue:app <entry id>     # or --all

Run it with ``python examples/dlq_requeue.py`` (``$STREAMQ_REDIS_URL`` or the
embedded server; ``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name).
"""

from __future__ import annotations

import os
import sys

import anyio

from streamq import App, DeadLetters, JobFailed, Worker, configure_logging

app = App(os.environ.get("STREAMQ_EXAMPLE_QUEUE", "dlq-example"))
USD_PER_UNIT = {"USD": 1.0, "GBP": 1.27}  # EUR is missing: the "bug"


# Only network errors are worth a retry; a KeyError fails the job at once.
@app.task(name="charge_card", max_retries=3, retry_on=(ConnectionError, TimeoutError))
async def charge_card(order_id: str, amount: float, currency: str) -> dict[str, str | float]:
    usd = round(amount * USD_PER_UNIT[currency], 2)
    return {"order": order_id, "charged_usd": usd}


async def main() -> int:
    # Final failures log at error level; this example prints them itself.
    configure_logging(json=False, level="critical")
    dead_letters = DeadLetters(app)
    async with app:
        orders = await charge_card.enqueue_many(
            [("A-1", 20.0, "USD"), ("A-2", 15.0, "EUR"), ("A-3", 8.0, "GBP")]
        )
        await Worker(app, burst=True).run()
        for job in orders:
            try:
                print(f"{job.id[:8]} -> {await job.result(timeout=10)}")
            except JobFailed as exc:
                print(f"{job.id[:8]} -> {await job.status()}: {exc.error_type}: {exc.message}")

        # The DLQ may hold earlier runs' entries too: pick this run's by job id.
        ours = {job.id for job in orders}
        dead = [letter async for letter in dead_letters.iter() if letter.job_id in ours]
        for letter in dead:
            print(f"DLQ {letter.id}: {letter.task} {letter.reason!r}, attempts: {letter.attempts}")
        if len(dead) != 1:
            print(f"expected one dead job, found {len(dead)}")
            return 1

        USD_PER_UNIT["EUR"] = 1.08  # the fix is deployed
        requeued = [await dead_letters.requeue(letter.id) for letter in dead]
        print(f"requeued {len(requeued)}; status now: {await app.job(requeued[0]).status()}")
        await Worker(app, burst=True).run()

        retried = [await app.job(job_id).result(timeout=10) for job_id in requeued]
        print(f"after the fix: {retried}")
        left = [letter async for letter in dead_letters.iter() if letter.job_id in ours]
    if retried != [{"order": "A-2", "charged_usd": 16.2}] or left:
        print("expected the requeued job charged, and none of this run's jobs in the DLQ")
        return 1
    print("no dead letter of this run is left")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
