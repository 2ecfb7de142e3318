"""Drain of CPU-bound jobs with 1, 2 and 4 worker processes (``--processes N``).

Starts its own valkey-server (127.0.0.1, AOF off). For each process count it
enqueues ``--jobs`` jobs of pure-Python work (``--work-ms`` of CPU each,
calibrated here as a loop count, so every run does the same work) on a fresh
queue, then runs, as a user would::

    python -m streamq worker cpu_processes:app --processes N --concurrency 1 --burst

(this file is the App's module) and waits for it to exit. The drain rate is
taken from the job hashes (server time), from the moment every process has
taken its first job to the last finish, so the interpreters' start-up is not
in it; the wall time with start-up is shown beside it. A pure-Python job
holds the GIL, so one process runs one at a time whatever its concurrency:
expect the rate to grow with processes up to the number of cores, and stay
flat beyond. Other work on the machine shows up as noise: the load average
before and after each setting is printed.

    .venv/bin/python bench/cpu_processes.py                  # 200 jobs x 50 ms, about 40 s here
    .venv/bin/python bench/cpu_processes.py --processes 1 2 4 8 --jobs 400
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import structlog

from streamq import App
from streamq.embedded import ValkeyServer

BENCH = Path(__file__).resolve().parent
QUEUE_ENV = "BENCH_CPU_QUEUE"
CHUNK = 1000


def burn(loops: int) -> int:
    """Pure-Python arithmetic: holds the GIL for all of its run."""
    total = 0
    for i in range(loops):
        total = (total + i * i) % 1_000_003
    return total


def register(app: App) -> App:
    app.task(name="burn", timeout=600)(burn)
    return app


app = register(App(os.environ.get(QUEUE_ENV, "cpu-bench")))


def calibrate(work_ms: float) -> int:
    """The loop count that takes about ``work_ms`` of CPU here (best of 5)."""
    probe = 200_000
    best = min(_cpu_time(probe) for _ in range(5))
    return max(1, int(probe * work_ms / 1000 / best))


def _cpu_time(loops: int) -> float:
    started = time.thread_time()
    burn(loops)
    return time.thread_time() - started


def _load() -> str:
    """The 1-minute load average (other work on the machine is noise here)."""
    return f"{os.getloadavg()[0]:.2f}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def enqueue(url: str, queue: str, jobs: int, loops: int) -> list[str]:
    producer = register(App(queue, redis_url=url))
    ids: list[str] = []
    async with producer:
        task = producer.tasks["burn"]
        for start in range(0, jobs, CHUNK):
            batch = await task.enqueue_many([(loops,)] * min(CHUNK, jobs - start))
            ids += [job.id for job in batch]
    return ids


async def drain_window(url: str, queue: str, ids: list[str]) -> tuple[float, int, int, int]:
    """The drain once every process runs: (seconds, jobs in it, jobs succeeded, consumers).

    The window opens when the last process to start took its first job (the
    interpreters start one after another) and closes at the last finish; the
    jobs counted are those that started in it.
    """
    reader = App(queue, redis_url=url)
    async with reader:
        redis = await reader.redis()
        pipe = redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(reader.keys.job(job_id), "status", "started_ms", "finished_ms", "worker")
        rows = await pipe.execute()
    done = [(int(row[1]), int(row[2]), row[3]) for row in rows if row[0] == b"succeeded"]
    if not done:
        return 0.0, 0, 0, 0
    first_by_worker: dict[bytes, int] = {}
    for started, _, worker in done:
        first_by_worker[worker] = min(started, first_by_worker.get(worker, started))
    opened = max(first_by_worker.values())
    closed = max(finished for _, finished, _ in done)
    counted = sum(1 for started, _, _ in done if started >= opened)
    return (closed - opened) / 1000, counted, len(done), len(first_by_worker)


def run_workers(url: str, queue: str, processes: int, concurrency: int) -> tuple[int, float]:
    env = dict(os.environ, STREAMQ_REDIS_URL=url, **{QUEUE_ENV: queue})
    command = [
        sys.executable, "-m", "streamq", "worker", "cpu_processes:app",
        "--processes", str(processes), "--concurrency", str(concurrency), "--burst",
        "--log-level", "warning",
    ]  # fmt: skip
    started = time.perf_counter()
    code = subprocess.run(command, cwd=BENCH, env=env, check=False, timeout=3600).returncode
    return code, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--work-ms", type=float, default=50.0, help="CPU per job")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=1, help="per process")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting (median)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    loops = calibrate(args.work_ms)
    print(
        f"{args.jobs} jobs x {args.work_ms:g} ms of pure-Python CPU ({loops:,} loops), "
        f"concurrency {args.concurrency} per process, {os.cpu_count()} cores",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="streamq-cpu-bench-") as tmp:
        server = ValkeyServer(Path(tmp) / "valkey", port=_free_port(),
                              extra_args=["--appendonly", "no"])  # fmt: skip
        server.start()
        try:
            for processes in args.processes:
                rates, walls = [], []
                for run in range(args.repeat):
                    queue = f"cpu-p{processes}-r{run}"
                    load_before = _load()
                    ids = anyio.run(enqueue, server.url, queue, args.jobs, loops)
                    code, wall_s = run_workers(server.url, queue, processes, args.concurrency)
                    window = anyio.run(drain_window, server.url, queue, ids)
                    window_s, counted, done, workers = window
                    if code != 0 or done != args.jobs:
                        print(f"  --processes {processes}: exit {code}, {done}/{args.jobs} done")
                        return 1
                    rates.append(counted / window_s)
                    walls.append(wall_s)
                    print(
                        f"  --processes {processes} run {run + 1}: {counted / window_s:,.1f} "
                        f"jobs/s ({counted} jobs in {window_s:.2f} s once all {workers} "
                        f"processes ran), {args.jobs / wall_s:,.1f} jobs/s over "
                        f"{wall_s:.2f} s with start-up; load {load_before} -> {_load()}",
                        flush=True,
                    )
                rows.append((processes, statistics.median(rates), statistics.median(walls)))
        finally:
            server.stop()
    base = rows[0][1]
    print("\n| processes | jobs/s | vs first | wall with start-up |")
    print("|---|---|---|---|")
    for processes, rate, wall in rows:
        print(f"| {processes} | {rate:,.1f} | {rate / base:.2f}x | {wall:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
