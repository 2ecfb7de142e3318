"""A producer: enqueue a batch of emails, then wait for every result.

It runs no worker of its own: start one first (compose.yaml's ``worker``
service, or ``streamq worker examples.emails:app`` in another terminal), or
pass ``--with-worker`` to run one in this process. It exits 1 if any job
failed or did not finish within ``--timeout`` seconds.

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
        sent = failed = 0
        try:
            # One deadline for the whole batch; each result() waits on the events stream.
            with anyio.fail_after(timeout_s):
                for job in batch:
                    try:
                        await job.result()
                        sent += 1
                    except JobFailed as exc:
                        failed += 1
                        print(f"job {job.id} failed: {exc.error_type}: {exc.message}")
        except TimeoutError:
            print(f"timed out after {timeout_s} s: is a worker running for {app.name!r}?")
        finally:
            worker.stop()
        elapsed = time.monotonic() - started
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
