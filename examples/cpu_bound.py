"""CPU-bound jobs on every core: ``streamq worker APP --processes N``.

A sync handler never blocks the worker's event loop: the worker runs it in a
thread, so fetching, heartbeats and other jobs go on meanwhile. Threads share
one GIL, though: pure-Python number crunching runs one at a time in a
process, whatever the concurrency. For more CPU, run more processes:

    streamq worker examples.cpu_bound:app --processes 4 --concurrency 1

starts four worker processes under one supervisor, each its own consumer
with one handler slot (more threads would not add CPU for pure Python). The
supervisor restarts a process that crashes, passes SIGTERM on to all of
them, and with ``--metrics-port`` serves their metrics as one. C code that
releases the GIL (hashlib, zlib, numpy, Pillow) does run in parallel
threads, so ``hash_password`` would not need the extra processes.

This script enqueues the jobs, then runs exactly that command with
``--burst`` (one process per core, up to 8), which drains the queue and
exits, and checks the results. Run it with ``python examples/cpu_bound.py``
(``$STREAMQ_REDIS_URL`` or the embedded server; ``$STREAMQ_EXAMPLE_QUEUE``
overrides the queue name).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio

from streamq import App, configure_logging, progress_sync

app = App(os.environ.get("STREAMQ_EXAMPLE_QUEUE", "cpu-example"))
ROOT = Path(__file__).resolve().parents[1]  # where ``examples.cpu_bound`` imports from


@app.task(name="count_primes", timeout=60)
def count_primes(below: int) -> int:
    """Pure Python, so it holds the GIL: a sync handler, in a worker thread."""
    count = 0
    for n in range(2, below):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
        if n % 10_000 == 0:
            # Sync handlers report progress with progress_sync (async ones: await progress).
            progress_sync(100 * n / below, f"checked {n}/{below}")
    return count


@app.task(name="hash_password", timeout=60)
def hash_password(password: str, salt_hex: str, iterations: int = 100_000) -> str:
    """hashlib releases the GIL while it hashes, so these run in parallel threads."""
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt_hex), iterations)
    return digest.hex()


def run_workers(processes: int) -> int:
    """``streamq worker examples.cpu_bound:app --processes N --burst``, as from a shell."""
    command = [
        sys.executable, "-m", "streamq", "worker", "examples.cpu_bound:app",
        "--processes", str(processes), "--concurrency", "1", "--burst",
        "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, check=False, timeout=120).returncode


async def main() -> int:
    configure_logging(json=False, level="warning")
    known = {20_000: 2262, 40_000: 4203, 60_000: 6057}  # pi(x), from a table of primes
    heavy = 8  # jobs of a few tenths of a second each, to keep every core busy
    passwords = [("correct horse", "00ff"), ("battery staple", "a1b2")]
    processes = min(os.cpu_count() or 1, 8)
    async with app:
        prime_jobs = await count_primes.enqueue_many([(limit,) for limit in known])
        heavy_jobs = await count_primes.enqueue_many([(200_000,)] * heavy)
        hash_jobs = await hash_password.enqueue_many(passwords)
        started = time.perf_counter()
        code = await anyio.to_thread.run_sync(run_workers, processes)
        elapsed_s = time.perf_counter() - started
        if code != 0:
            print(f"the workers exited with {code}")
            return 1

        ok = True
        for (limit, expected), job in zip(known.items(), prime_jobs, strict=True):
            result = await job.result(timeout=10)
            print(f"primes below {limit}: {result}")
            ok &= result == expected
        heavy_results = [await job.result(timeout=10) for job in heavy_jobs]
        ok &= heavy_results == [17_984] * heavy  # pi(200,000)
        for (password, salt), job in zip(passwords, hash_jobs, strict=True):
            digest = await job.result(timeout=10)
            print(f"pbkdf2({password!r}) = {digest[:16]}...")
            ok &= digest == hash_password(password, salt)  # calling a task runs it right here
        ran_on = {(await job.info())["worker"] for job in [*prime_jobs, *heavy_jobs]}
        print(
            f"{len(prime_jobs) + heavy} prime jobs ran on {len(ran_on)} of {processes} "
            f"worker process(es), {elapsed_s:.1f} s with start-up"
        )
    if not ok:
        print("a worker's result is wrong")
        return 1
    print("every result checks out")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
