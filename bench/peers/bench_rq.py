"""RQ: ``rq worker`` (the default Worker, which forks a work horse per job: one job at a time).

Bulk: ``Queue.enqueue_many`` of ``Queue.prepare_data`` specs, one pipeline per 1000.
"""

import sys
import time
from pathlib import Path

from _common import SLEEP_S, URL, chunks, count_done
from redis import Redis
from rq import Queue

INFO = {
    "concurrency": 1,
    "worker": "rq worker bench (default Worker: one forked work horse per job)",
    "enqueue_single": "queue.enqueue(fn)",
    "enqueue_bulk": "queue.enqueue_many([Queue.prepare_data(fn) x 1000]): one pipeline",
    "note": "one job at a time, each in a freshly forked work horse (RQ's default Worker)",
    "distributions": ["rq"],
}


def noop() -> None:
    count_done()


def sleep() -> None:
    time.sleep(SLEEP_S)
    count_done()


def enqueue(task: str, n: int, bulk: bool) -> float:
    target = noop if task == "noop" else sleep
    queue = Queue("bench", connection=Redis.from_url(URL))
    started = time.perf_counter()
    if bulk:
        for size in chunks(n):
            queue.enqueue_many([Queue.prepare_data(target) for _ in range(size)])
    else:
        for _ in range(n):
            queue.enqueue(target)
    return time.perf_counter() - started


def worker_argv() -> list[str]:
    return [
        str(Path(sys.executable).with_name("rq")),
        "worker",
        "--url",
        URL,
        "--logging_level",
        "WARNING",
        "bench",
    ]
