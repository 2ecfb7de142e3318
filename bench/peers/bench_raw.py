"""The ceiling: raw redis-py asyncio on one stream, no framework.

Enqueue: XADD one awaited call at a time, or pipelines of 1000 XADDs.
Drain: one consumer, XREADGROUP COUNT 100, then one pipeline of XACK for the
batch plus INCRBY of the counter (the batched form of the jobs' INCR).
"""

import asyncio
import signal
import sys
import time

import redis.asyncio as aredis
from _common import CHUNK, COUNTER, URL, chunks
from redis.exceptions import ResponseError

STREAM = "raw:stream"
GROUP = "workers"
FIELDS = {"task": "noop", "payload": "[]"}

INFO = {
    "concurrency": "1 consumer, batches of 100",
    "worker": "one asyncio consumer: XREADGROUP COUNT 100 BLOCK 1000, pipelined XACK + INCRBY",
    "enqueue_single": "await r.xadd()",
    "enqueue_bulk": f"pipeline(transaction=False) of {CHUNK} XADDs",
    "distributions": [],
}


async def enqueue(task: str, n: int, bulk: bool) -> float:
    r = aredis.Redis.from_url(URL)
    try:
        await r.ping()
        started = time.perf_counter()
        if bulk:
            for size in chunks(n):
                pipe = r.pipeline(transaction=False)
                for _ in range(size):
                    pipe.xadd(STREAM, FIELDS)
                await pipe.execute()
        else:
            for _ in range(n):
                await r.xadd(STREAM, FIELDS)
        return time.perf_counter() - started
    finally:
        await r.aclose()


async def consume() -> None:
    r = aredis.Redis.from_url(URL)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    while True:
        reply = await r.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=100, block=1000)
        if not reply:
            continue
        ids = [entry_id for entry_id, _ in reply[0][1]]
        pipe = r.pipeline(transaction=False)
        pipe.xack(STREAM, GROUP, *ids)
        pipe.incrby(COUNTER, len(ids))
        await pipe.execute()


def run_worker() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(consume())


def worker_argv() -> list[str]:
    return [sys.executable, "adapter.py", "bench_raw", "worker"]
