"""pydocket (docket): ``docket worker`` with its default ``--concurrency 10``.

Bulk: ``Docket.add_many`` of ``docket.call(task)()`` specs, pipelined in chunks of 1000.
"""

import asyncio
import sys
import time
from pathlib import Path

from _common import SLEEP_S, URL, chunks, count_done_async
from docket import Docket

NAME = "bench"

INFO = {
    "concurrency": 10,
    "worker": "docket worker --tasks bench_docket:tasks (--concurrency 10, the default)",
    "note": "with every slot busy, the worker sleeps --minimum-check-interval (100 ms) "
    "before it reads again: the defaults cap a drain near 10 jobs / 100 ms",
    "enqueue_single": "await docket.add(task)()",
    "enqueue_bulk": "await docket.add_many([docket.call(task)() x 1000]): pipelined",
    "distributions": ["pydocket"],
}


async def noop() -> None:
    await count_done_async()


async def sleep() -> None:
    await asyncio.sleep(SLEEP_S)
    await count_done_async()


tasks = [noop, sleep]


async def enqueue(task: str, n: int, bulk: bool) -> float:
    target = noop if task == "noop" else sleep
    async with Docket(name=NAME, url=URL) as docket:
        started = time.perf_counter()
        if bulk:
            for size in chunks(n):
                await docket.add_many([docket.call(target)() for _ in range(size)])
        else:
            for _ in range(n):
                await docket.add(target)()
        return time.perf_counter() - started


def worker_argv() -> list[str]:
    return [
        str(Path(sys.executable).with_name("docket")),
        "worker",
        "--url",
        URL,
        "--docket",
        NAME,
        "--tasks",
        "bench_docket:tasks",
        "--concurrency",
        "10",
        "--logging-level",
        "WARNING",
    ]
