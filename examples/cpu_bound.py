"""A CPU-bound job: a plain (sync) function, run by the worker in a thread.

A sync handler never blocks the worker's event loop: the worker runs it in a
thread (one per concurrency slot), so fetching, heartbeats and other jobs go
on meanwhile. Threads share one GIL, though: pure-Python number crunching
runs one at a time in a process. For more CPU, run more worker processes
(``streamq worker examples.cpu_bound:app`` once per core); C code that
releases the GIL (hashlib, zlib, numpy, Pillow) does run in parallel threads.

Run it with ``python examples/cpu_bound.py`` (``$STREAMQ_REDIS_URL`` or the
embedded server; ``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name).
"""

from __future__ import annotations

import hashlib
import os
import sys

import anyio

from streamq import App, Worker, configure_logging, progress_sync

app = App(os.environ.get("STREAMQ_EXAMPLE_QUEUE", "cpu-example"))


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


async def main() -> int:
    configure_logging(json=False, level="warning")
    known = {20_000: 2262, 40_000: 4203, 60_000: 6057}  # pi(x), from a table of primes
    passwords = [("correct horse", "00ff"), ("battery staple", "a1b2")]
    async with app:
        prime_jobs = await count_primes.enqueue_many([(limit,) for limit in known])
        hash_jobs = await hash_password.enqueue_many(passwords)
        # Each slot is a thread for sync handlers: here at most 4 at once.
        await Worker(app, concurrency=4, burst=True).run()

        ok = True
        for (limit, expected), job in zip(known.items(), prime_jobs, strict=True):
            result = await job.result(timeout=10)
            print(f"primes below {limit}: {result}")
            ok &= result == expected
        for (password, salt), job in zip(passwords, hash_jobs, strict=True):
            digest = await job.result(timeout=10)
            print(f"pbkdf2({password!r}) = {digest[:16]}...")
            ok &= digest == hash_password(password, salt)  # calling a task runs it right here
    if not ok:
        print("a worker's result is wrong")
        return 1
    print("every result checks out")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
