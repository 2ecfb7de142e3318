"""Celery with the Redis broker and no result backend.

Worker: ``celery -A bench_celery worker --pool gevent --concurrency 100``, the
pool Celery's docs recommend for I/O-bound tasks (prefork would mean one
process per slot). Bulk: ``group(...).apply_async()``, which publishes its
messages one by one: Celery has no pipelined enqueue.
"""

import sys
import time
from pathlib import Path

from _common import SLEEP_S, URL, chunks, count_done
from celery import Celery, group

CONCURRENCY = 100

INFO = {
    "concurrency": CONCURRENCY,
    "worker": f"celery -A bench_celery worker --pool gevent --concurrency {CONCURRENCY}",
    "enqueue_single": "task.delay()",
    "enqueue_bulk": "group([task.s() x 1000]).apply_async(): one publish per message inside",
    "note": "one process with a gevent pool, the pool Celery documents for I/O-bound tasks; "
    "the default prefork pool would mean one process per slot",
    "distributions": ["celery", "kombu", "gevent"],
}

app = Celery("bench", broker=URL)
app.conf.task_default_queue = "bench"


@app.task(name="noop", ignore_result=True)
def noop() -> None:
    count_done()


@app.task(name="sleep", ignore_result=True)
def sleep() -> None:
    time.sleep(SLEEP_S)  # gevent's monkey patching makes this yield
    count_done()


def enqueue(task: str, n: int, bulk: bool) -> float:
    target = noop if task == "noop" else sleep
    with app.connection_for_write() as conn:
        conn.ensure_connection()
    started = time.perf_counter()
    if bulk:
        for size in chunks(n):
            group(target.s() for _ in range(size)).apply_async()
    else:
        for _ in range(n):
            target.delay()
    return time.perf_counter() - started


def worker_argv() -> list[str]:
    return [
        str(Path(sys.executable).with_name("celery")),
        "-A",
        "bench_celery",
        "worker",
        "--pool",
        "gevent",
        "--concurrency",
        str(CONCURRENCY),
        "--loglevel",
        "WARNING",
    ]
