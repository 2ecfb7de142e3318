"""Email-style I/O jobs: many slow network calls, run concurrently by one worker.

An async handler spends its time waiting on the network, so one worker runs
many of them at once (``concurrency`` slots, each an anyio task). Twenty
sends of 0.2 s each finish in about 0.2 s, not 4 s.

Run it with ``python examples/emails.py`` (``$STREAMQ_REDIS_URL`` or the
embedded server; ``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name). The
same ``app`` is what compose.yaml's worker serves:

    streamq worker examples.emails:app --concurrency 50
"""

from __future__ import annotations

import os
import sys
import time

import anyio

from streamq import App, Worker, configure_logging, current_job

app = App(os.environ.get("STREAMQ_EXAMPLE_QUEUE", "emails"))
SMTP_ROUND_TRIP_S = 0.2
sending = {"now": 0, "peak": 0}  # how many sends overlap, to show the concurrency


# Explicit names: this module runs as __main__ here but as examples.emails in
# `streamq worker`, and the worker finds handlers by name.
@app.task(name="send_email", priority="high", max_retries=5, timeout=30, backoff_base=0.5)
async def send_email(to: str, subject: str, body: str = "") -> dict[str, str]:
    sending["now"] += 1
    sending["peak"] = max(sending["peak"], sending["now"])
    try:
        # Stands in for the SMTP conversation. Any exception raised here
        # (a refused connection, a 4xx reply) is retried with backoff.
        await anyio.sleep(SMTP_ROUND_TRIP_S)
    finally:
        sending["now"] -= 1
    # The job id makes a good idempotency key for the mail provider: a retried
    # job keeps its id, so the provider can drop a duplicate send.
    return {"to": to, "message_id": f"<{current_job().job_id}@example.com>", "status": "sent"}


@app.task(name="send_digest", priority="low", timeout=60)
async def send_digest(to: str, items: list[str]) -> dict[str, str | int]:
    await anyio.sleep(SMTP_ROUND_TRIP_S)
    return {"to": to, "items": len(items), "status": "sent"}


async def main() -> int:
    configure_logging(json=False, level="warning")
    recipients = [f"user{n}@example.com" for n in range(20)]
    async with app:
        # One pipelined round trip for the whole batch.
        welcomes = await send_email.enqueue_many(
            [{"to": to, "subject": "Welcome!", "body": "Glad you're here."} for to in recipients]
        )
        digest = await send_digest.enqueue("ops@example.com", ["signups: 20", "bounces: 0"])
        print(f"enqueued {len(welcomes)} welcome emails and 1 digest")

        started = time.monotonic()
        await Worker(app, concurrency=50, burst=True).run()
        elapsed = time.monotonic() - started

        results = [await job.result(timeout=10) for job in welcomes]
        print(f"first: {results[0]['to']} -> {results[0]['status']} {results[0]['message_id']}")
        print(f"digest -> {await digest.result(timeout=10)}")
    sent = sum(r["status"] == "sent" for r in results)
    print(f"sent {sent} emails in {elapsed:.1f} s, up to {sending['peak']} at once")
    if sent != len(recipients) or sending["peak"] < 2:
        print("expected every email sent, several at once")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
