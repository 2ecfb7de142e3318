"""Dramatiq, Redis broker: ``dramatiq bench_dramatiq --processes 1`` (8 threads, the default).

Bulk: ``group(...).run()``, which enqueues its messages one by one (one
script call each): Dramatiq has no pipelined enqueue.
"""

import sys
import time
from pathlib import Path

import dramatiq
from _common import SLEEP_S, URL, chunks, count_done
from dramatiq.brokers.redis import RedisBroker

INFO = {
    "concurrency": 8,
    "worker": "dramatiq bench_dramatiq --processes 1 (--threads 8, the default)",
    "enqueue_single": "actor.send()",
    "enqueue_bulk": "group([actor.message() x 1000]).run(): one call per message inside",
    "distributions": ["dramatiq"],
}

broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def noop() -> None:
    count_done()


@dramatiq.actor(queue_name="bench")
def sleep() -> None:
    time.sleep(SLEEP_S)
    count_done()


def enqueue(task: str, n: int, bulk: bool) -> float:
    target = noop if task == "noop" else sleep
    started = time.perf_counter()
    if bulk:
        for size in chunks(n):
            dramatiq.group(target.message() for _ in range(size)).run()
    else:
        for _ in range(n):
            target.send()
    return time.perf_counter() - started


def worker_argv() -> list[str]:
    return [
        str(Path(sys.executable).with_name("dramatiq")),
        "bench_dramatiq",
        "--processes",
        "1",
        "--threads",
        "8",
    ]
