"""A producer: enqueue a batch of emails, then wait for every result.

It runs no worker of its own: start one (compose.yaml's ``worker`` service, or
``streamq worker examples.emails:app`` in another terminal, before or after
this), or pass ``--with-worker`` to run one in this process. With no worker
reading the queue it says so, and it reports progress every few seconds while
it waits. It exits 1 if any job failed or did not finish within ``--timeout``
seconds; unfinished jobs stay queued for the next worker.

    python examples/producer.py --jobs 200 --timeout 60

``$STREAMQ_REDIS_URL`` (else the embedded server) and ``$STREAMQ_EXAMPLE_QUEUE``
are read as in emails.py, whose App and tasks this reuses.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import anyio

# Run as a script, this file's directory is on sys.path: `emails` is
# examples/emails.py, the module the worker loads as `examples.emails`. Tasks
# are found by their explicit names, so the two spellings agree.
from emails import app, send_email

from streamq import JobFailed, Worker, configure_logging
from streamq.stats import collect

PROGRESS_EVERY_S = 5.0
LIVE_WORKER_IDLE_MS = 15_000  # a worker blocked on its read still counts as reading


async def worker_reading() -> bool:
    """Whether a consumer of the queue read from it recently (a live worker)."""
    stats = await collect(app)
    return any(c.idle_ms < LIVE_WORKER_IDLE_MS for c in stats.consumers)


async def produce(jobs: int, timeout_s: float, with_worker: bool) -> int:
    async with app, anyio.create_task_group() as tg:
        worker = Worker(app, concurrency=50)
        if with_worker:
            await tg.start(worker.run)
        started = time.monotonic()
        batch = await send_email.enqueue_many(
            [(f"user{n}@example.com", f"Newsletter #{n}") for n in range(jobs)]
        )
        print(f"enqueued {len(batch)} emails to queue {app.name!r}", flush=True)
        if not with_worker and not await worker_reading():
            print(
                f"no worker is reading queue {app.name!r} yet: start one in another terminal "
                "with `streamq worker examples.emails:app` (or pass --with-worker); waiting",
                flush=True,
            )
        done = {"sent": 0, "failed": 0}

        async def report_progress() -> None:
            while True:
                await anyio.sleep(PROGRESS_EVERY_S)
                print(f"{done['sent'] + done['failed']}/{len(batch)} done", flush=True)

        try:
            # One deadline for the whole batch; each result() waits on the events stream.
            with anyio.fail_after(timeout_s):
                async with anyio.create_task_group() as progress:
                    progress.start_soon(report_progress)
                    for job in batch:
                        try:
                            await job.result()
                            done["sent"] += 1
                        except JobFailed as exc:
                            done["failed"] += 1
                            print(f"job {job.id} failed: {exc.error_type}: {exc.message}")
                    progress.cancel_scope.cancel()
        except TimeoutError:
            left = len(batch) - done["sent"] - done["failed"]
            print(
                f"timed out after {timeout_s} s; {left} jobs are still queued for a worker "
                f"of {app.name!r}"
            )
        finally:
            worker.stop()
        elapsed = time.monotonic() - started
    sent, failed = done["sent"], done["failed"]
    print(f"{sent}/{len(batch)} sent, {failed} failed, in {elapsed:.1f} s")
    return 0 if sent == len(batch) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Enqueue emails and wait for the results.")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the batch")
    parser.add_argument("--with-worker", action="store_true", help="run a worker in this process")
    args = parser.parse_args(argv)
    configure_logging(json=False, level="warning")
    return anyio.run(produce, args.jobs, args.timeout, args.with_worker)


if __name__ == "__main__":
    sys.exit(main())
