"""Priorities: jobs enqueued low first still run highest priority first.

Each priority has its own stream, and the worker reads them in order: it takes
a lower stream's jobs only when every higher stream is empty. With one job at
a time (``concurrency=1``) the run order shows it exactly.

Run it with ``python examples/priorities.py`` (``$STREAMQ_REDIS_URL`` or the
embedded server; ``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name).
"""

from __future__ import annotations

import os
import sys

import anyio

from streamq import App, Worker, configure_logging

# The default priorities, spelled out so $STREAMQ_PRIORITIES cannot change them here.
app = App(
    os.environ.get("STREAMQ_EXAMPLE_QUEUE", "priorities-example"),
    priorities=("high", "default", "low"),
)
ran: list[str] = []


@app.task(name="report", priority="low")
async def report(label: str) -> str:
    ran.append(label)
    return label


async def main() -> None:
    configure_logging(json=False, level="warning")
    print(f"priorities, highest first: {', '.join(app.settings.priorities)}")
    async with app:
        # Lowest first, so enqueue order alone would run them the wrong way round.
        for priority in ("low", "default", "high"):
            await report.with_options(priority=priority).enqueue_many(
                [(f"{priority}-{n}",) for n in (1, 2)]
            )
            print(f"enqueued 2 {priority} jobs")
        await Worker(app, concurrency=1, burst=True).run()
    print(f"ran: {' '.join(ran)}")
    expected = ["high-1", "high-2", "default-1", "default-2", "low-1", "low-2"]
    if ran != expected:
        print(f"unexpected order; wanted {' '.join(expected)}")
        sys.exit(1)
    print("high ran first")


if __name__ == "__main__":
    anyio.run(main)
