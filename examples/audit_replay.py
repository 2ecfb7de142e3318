"""Audit: replay a queue's history, follow one job's story, re-drive failed jobs.

Every state change writes an event (enqueued, started, retried, succeeded,
failed, ...), and job messages stay in their streams after they ran until
retention trims them (7 days by default). ``streamq.replay.Replay`` reads that
history back; the CLI prints the same records as JSON lines:

    streamq replay examples.audit_replay:app --job <job id>
    streamq replay examples.audit_replay:app --since 2026-11-01 --status failed
    streamq replay examples.audit_replay:app --source jobs --status failed --redrive

Run it with ``python examples/audit_replay.py`` (``$STREAMQ_REDIS_URL`` or the
embedded server; ``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys

import anyio

from streamq import App, Worker, configure_logging, current_job
from streamq.replay import Replay

app = App(os.environ.get("STREAMQ_EXAMPLE_QUEUE", "audit-example"))
REFUNDS_ALLOWED = {"ada": True, "bob": False}  # bob's refund fails until support allows it


# backoff_base=0: a retry goes straight back to its stream (keeps the example short).
@app.task(name="refund", max_retries=1, backoff_base=0.0, retry_on=(ConnectionError,))
async def refund(customer: str, amount: float) -> dict[str, str | float]:
    if customer == "ada" and current_job().attempt == 1:
        raise ConnectionError("payment provider timed out")
    if not REFUNDS_ALLOWED[customer]:
        raise PermissionError(f"refunds for {customer} need approval")
    return {"customer": customer, "refunded": amount}


async def main() -> int:
    configure_logging(json=False, level="critical")  # the history below tells the story
    replay = Replay(app)
    since = dt.datetime.now(dt.UTC)  # this run's history only (the queue may have older)
    async with app:
        ada = await refund.enqueue("ada", 30.0)
        bob = await refund.enqueue("bob", 12.5)
        await Worker(app, burst=True).run()

        print(f"story of job {ada.id[:8]}:")
        story = await replay.story(ada.id)
        for record in story:
            attempt = record.fields.get("attempt", "")
            print(f"  {record.as_dict()['time']} {record.source:<7} {record.kind:<9} {attempt}")

        # History as JSON lines, as `streamq replay --status failed` prints it.
        failed = [r async for r in replay.events(since=since, kinds=["failed"])]
        for record in failed:
            print(json.dumps(record.as_dict()))

        # Re-drive: enqueue the failed jobs' original messages again, as new jobs
        # (bob's job also sits in the DLQ; `requeue` there would rerun the same job id).
        REFUNDS_ALLOWED["bob"] = True
        messages = [r async for r in replay.messages(since=since, status="failed")]
        new_ids = await replay.redrive(messages)
        await Worker(app, burst=True).run()
        redriven = [await app.job(job_id).result(timeout=10) for job_id in new_ids]
        print(f"re-driven {len(new_ids)}: {redriven}")

    kinds = [r.kind for r in story if r.source == "event"]
    expected = ["enqueued", "started", "retried", "started", "succeeded"]
    ok = kinds == expected and [r.job_id for r in failed] == [bob.id]
    if not ok or redriven != [{"customer": "bob", "refunded": 12.5}]:
        print(f"unexpected history: {kinds}, failed {[r.job_id for r in failed]}")
        return 1
    print("the history holds every step")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
