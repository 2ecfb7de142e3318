"""taskiq with taskiq-redis's stream broker (RedisStreamBroker: XADD, XREADGROUP, XACK).

Worker: ``taskiq worker bench_taskiq:broker --workers 1`` with the default
``--max-async-tasks 100``. No bulk API: ``kiq()`` sends one message per call.
"""

import asyncio
import sys
import time
from pathlib import Path

from _common import SLEEP_S, URL, count_done_async
from taskiq_redis import RedisStreamBroker

INFO = {
    "concurrency": 100,
    "worker": "taskiq worker bench_taskiq:broker --workers 1 (--max-async-tasks 100, the default)",
    "enqueue_single": "await task.kiq()",
    "enqueue_bulk": None,
    "distributions": ["taskiq", "taskiq-redis"],
}

broker = RedisStreamBroker(url=URL, queue_name="bench")


@broker.task(task_name="noop")
async def noop() -> None:
    await count_done_async()


@broker.task(task_name="sleep")
async def sleep() -> None:
    await asyncio.sleep(SLEEP_S)
    await count_done_async()


async def enqueue(task: str, n: int, bulk: bool) -> float:
    target = noop if task == "noop" else sleep
    # startup() creates the consumer group; taskiq creates it at "$", so it
    # must exist before the first message or the worker never sees it.
    await broker.startup()
    try:
        started = time.perf_counter()
        for _ in range(n):
            await target.kiq()
        return time.perf_counter() - started
    finally:
        await broker.shutdown()


def worker_argv() -> list[str]:
    return [
        str(Path(sys.executable).with_name("taskiq")),
        "worker",
        "bench_taskiq:broker",
        "--workers",
        "1",
        "--max-async-tasks",
        "100",
        "--log-level",
        "WARNING",
    ]
