"""arq: ``arq bench_arq.WorkerSettings`` with its default ``max_jobs`` (10).

No bulk API: ``ArqRedis.enqueue_job`` adds one job per call. Worker logging is
set to WARNING through arq's ``--custom-log-dict``.
"""

import asyncio
import sys
import time
from pathlib import Path

from _common import SLEEP_S, URL, count_done_async
from arq import create_pool
from arq.connections import RedisSettings

INFO = {
    "concurrency": 10,
    "worker": "arq bench_arq.WorkerSettings (max_jobs=10, the default)",
    "enqueue_single": "await redis.enqueue_job(name)",
    "enqueue_bulk": None,
    "note": "the worker reads at most queue_read_limit (100) job ids per poll and polls "
    "every poll_delay (0.5 s): the defaults cap a drain near 200 jobs/s",
    "distributions": ["arq"],
}

LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


async def noop(ctx: dict) -> None:
    await count_done_async()


async def sleep(ctx: dict) -> None:
    await asyncio.sleep(SLEEP_S)
    await count_done_async()


class WorkerSettings:
    functions = [noop, sleep]
    redis_settings = RedisSettings.from_dsn(URL)


async def enqueue(task: str, n: int, bulk: bool) -> float:
    pool = await create_pool(RedisSettings.from_dsn(URL))
    try:
        started = time.perf_counter()
        for _ in range(n):
            await pool.enqueue_job(task)
        return time.perf_counter() - started
    finally:
        await pool.aclose()


def worker_argv() -> list[str]:
    return [
        str(Path(sys.executable).with_name("arq")),
        "bench_arq.WorkerSettings",
        "--custom-log-dict",
        "bench_arq.LOG_CONFIG",
    ]
