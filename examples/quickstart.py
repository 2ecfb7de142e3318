"""Quickstart: define tasks, enqueue jobs, run a worker, read the results.

Run it with ``python examples/quickstart.py``. With no ``$STREAMQ_REDIS_URL``
it uses the embedded valkey-server (started on first use; it keeps running
for the next process until ``streamq server stop``). The same ``app`` serves a
long-running worker too:

    streamq worker examples.quickstart:app --concurrency 50

``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name (the tests use a fresh one).
"""

from __future__ import annotations

import os

import anyio

from streamq import App, Worker, configure_logging

app = App(os.environ.get("STREAMQ_EXAMPLE_QUEUE", "quickstart"))


# Explicit task names: the default is "<module>.<function>", which would be
# "__main__.send_email" when this file runs as a script but
# "examples.quickstart.send_email" in `streamq worker examples.quickstart:app`.
@app.task(name="send_email", priority="high", max_retries=5, timeout=30)
async def send_email(to: str, subject: str) -> dict[str, str]:
    await anyio.sleep(0.01)  # stands in for the SMTP round trip
    return {"to": to, "subject": subject, "status": "sent"}


@app.task(name="resize", priority="low", timeout=60)
def resize(path: str, width: int = 128) -> str:
    """A sync handler: the worker runs it in a thread."""
    stem, _, ext = path.rpartition(".")
    return f"{stem}.{width}w.{ext}"


async def main() -> None:
    # Warnings and errors only, readable on a terminal; `streamq worker` logs
    # every job (JSON when stdout is not a terminal).
    configure_logging(json=False, level="warning")
    async with app:
        welcome = await send_email.enqueue("ada@example.com", "Welcome!")
        digest = await send_email.with_options(priority="low").enqueue(
            "bob@example.com", "Your weekly digest"
        )
        thumbnails = await resize.enqueue_many([("cat.png",), ("dog.jpg", 64), {"path": "owl.gif"}])
        print(f"enqueued {2 + len(thumbnails)} jobs; first status: {await welcome.status()}")

        # Burst mode: run until nothing is waiting and nothing is in flight.
        await Worker(app, concurrency=10, burst=True).run()

        print(f"send_email -> {await welcome.result(timeout=10)}")
        print(f"send_email -> {await digest.result(timeout=10)}")
        for job in thumbnails:
            print(f"resize -> {await job.result(timeout=10)}")

        # Any process can look a job up again by its id.
        again = app.job(welcome.id)
        print(f"job {again.id} is {await again.status()}")


if __name__ == "__main__":
    anyio.run(main)
