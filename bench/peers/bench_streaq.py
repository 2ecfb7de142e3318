"""streaq: a Worker with its default concurrency (16), run with ``worker.run_sync()``.

That is what ``streaq run bench_streaq:worker`` does, minus its logging setup,
which is INFO with two lines per task and has no option to lower it.
"""

import asyncio
import logging
import time

from _common import SLEEP_S, URL, chunks, count_done_async
from streaq import Worker

INFO = {
    "concurrency": 16,
    "worker": "Worker(concurrency=16, the default).run_sync(), as `streaq run` does",
    "enqueue_single": "await task.enqueue()",
    "enqueue_bulk": "await worker.enqueue_many([task.enqueue() x 1000]): one pipeline",
    "distributions": ["streaq", "coredis", "anyio"],
}

worker = Worker(redis_url=URL, queue_name="bench")


@worker.task
async def noop() -> None:
    await count_done_async()


@worker.task
async def sleep() -> None:
    await asyncio.sleep(SLEEP_S)
    await count_done_async()


async def enqueue(task: str, n: int, bulk: bool) -> float:
    target = noop if task == "noop" else sleep
    async with worker:
        started = time.perf_counter()
        if bulk:
            for size in chunks(n):
                await worker.enqueue_many([target.enqueue() for _ in range(size)])
        else:
            for _ in range(n):
                await target.enqueue()
        return time.perf_counter() - started


def run_worker() -> None:
    logging.basicConfig(level=logging.WARNING)
    worker.run_sync()


def worker_argv() -> list[str]:
    import sys

    return [sys.executable, "adapter.py", "bench_streaq", "worker"]
