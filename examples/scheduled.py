"""Scheduled jobs: run a job after a delay, or at a given moment.

``enqueue_in`` and ``enqueue_at`` put the job in the queue's delayed set
(status ``scheduled``) instead of its stream. The janitor, inside every worker
by default, moves due jobs into their stream once per janitor interval
(default 1 s), so a job never starts early and at most about one interval late.

Run it with ``python examples/scheduled.py`` (``$STREAMQ_REDIS_URL`` or the
embedded server; ``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time

import anyio

from streamq import App, Worker, configure_logging

app = App(os.environ.get("STREAMQ_EXAMPLE_QUEUE", "scheduled-example"))


@app.task(name="send_reminder")
async def send_reminder(to: str, text: str) -> dict[str, str | int]:
    return {"to": to, "text": text, "ran_ms": int(time.time() * 1000)}


async def main() -> int:
    configure_logging(json=False, level="warning")
    async with app:
        soon = await send_reminder.enqueue_in(dt.timedelta(seconds=1), "ada@example.com", "standup")
        # enqueue_at needs an aware datetime: a naive one would be ambiguous.
        at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
        later = await send_reminder.enqueue_at(at, "bob@example.com", "review")
        # While it waits, the job hash holds its due time (epoch ms).
        due_ms = {job.id: int((await job.info())["due_ms"]) for job in (soon, later)}
        print(f"enqueued 2 reminders; status now: {await soon.status()}, {await later.status()}")

        # Burst mode waits for the delayed set to empty, so this returns after both ran.
        await Worker(app, burst=True).run()

        ok = True
        for job in (soon, later):
            result = await job.result(timeout=10)
            late_s = (int(result["ran_ms"]) - due_ms[job.id]) / 1000
            print(f"reminded {result['to']}: {await job.status()}, {late_s:.2f} s after due")
            # Never early; late by at most one janitor interval plus scheduling noise.
            ok &= 0 <= late_s < app.settings.janitor_interval_s + 2.0
    if not ok:
        print("a reminder ran too early or too late")
        return 1
    print("both ran on time")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
