"""What every peer adapter shares: the job bodies' counter, timing, the drain loop, the CLI.

An adapter module (``bench_<peer>.py``) runs inside that peer's own venv and
defines, in the library's documented style:

- ``INFO``: a dict with ``concurrency`` (int), ``worker`` (how the worker is
  started, for the report), ``enqueue_single`` and ``enqueue_bulk`` (the API
  used; ``enqueue_bulk`` is None when the library has no bulk API) and
  ``distributions`` (PyPI names whose versions are reported);
- ``enqueue(task, n, bulk) -> float``: enqueue ``n`` jobs of ``task`` ("noop"
  or "sleep") and return the seconds the enqueue loop took, setup excluded.
  Sync or async;
- ``worker_argv() -> list[str]``: the command that starts one worker process
  (run with the current directory set to this folder);
- optionally ``run_worker()``: the body of ``adapter.py <module> worker``, for
  libraries started programmatically rather than through their own CLI;
- optionally ``consumers(client) -> int``: how many worker processes have
  started consuming, read from Redis. With several workers, a drain's clock
  then starts once all of them consume, not when the first one does;
- optionally the hooks of the single-worker scenarios in ``_scenarios.py``
  (``latency`` and ``memory``; only bench_streamq has them).

Each job body ends with ``count_done()`` (sync) or ``await count_done_async()``:
an INCR of one counter key. That is the same work for every library, and it is
how completion is verified: from Redis, not from logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER = "bench:done"
# Scenario (e): one "<enqueue-to-start µs> <enqueued at, epoch µs>" entry per job.
LATENCIES = "bench:latency"
SLEEP_S = 0.001
# Bulk APIs and the ceiling's pipelines send this many jobs per call.
CHUNK = 1000
HERE = Path(__file__).resolve().parent
LOG_DIR = Path(os.environ.get("BENCH_LOG_DIR", HERE.parent / ".work" / "logs"))
RESULT_PREFIX = "BENCH_RESULT "
# Lines the orchestrator shows while the adapter runs (a long scenario's progress).
PROGRESS_PREFIX = "BENCH_PROGRESS "

_sync_client: redis.Redis | None = None
_async_client: Any = None


def count_done() -> None:
    """The job body's one Redis write, from a sync handler (thread, fork or greenlet)."""
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(URL)
    _sync_client.incr(COUNTER)


def _async_redis() -> Any:
    global _async_client
    if _async_client is None:
        import redis.asyncio as aredis

        # Sized above every worker's concurrency: redis-py 8 raises past the cap.
        _async_client = aredis.Redis.from_url(URL, max_connections=512)
    return _async_client


async def count_done_async() -> None:
    """The job body's one Redis write, from an async handler."""
    await _async_redis().incr(COUNTER)


async def record_latency_async(started: float, enqueued_at: float) -> None:
    """Scenario (e)'s job body: record ``started - enqueued_at`` (``time.time()`` values).

    The handler reads ``started`` as its very first statement; the rest is after the clock.
    """
    entry = f"{round((started - enqueued_at) * 1e6)} {round(enqueued_at * 1e6)}"
    await _async_redis().rpush(LATENCIES, entry)


def chunks(n: int, size: int = CHUNK) -> Iterator[int]:
    """Sizes of the successive bulk calls that add up to ``n``."""
    while n > 0:
        yield min(size, n)
        n -= size


def _run(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _emit(**fields: Any) -> None:
    print(RESULT_PREFIX + json.dumps(fields), flush=True)


def progress(text: str) -> None:
    print(PROGRESS_PREFIX + text, flush=True)


def _versions(module: ModuleType) -> dict[str, str]:
    names = [*module.INFO["distributions"], "redis", "hiredis"]
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class DrainError(RuntimeError):
    pass


def spawn_worker(
    module: ModuleType, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start one worker process with ``module.worker_argv()``, in its own process group."""
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    with log.open("wb") as sink:
        return subprocess.Popen(
            module.worker_argv(),
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """SIGTERM each worker's process group (libraries fork children), then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        # The group may outlive its leader (a pool's children): kill it either way.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _server_cpu_s() -> float | None:
    """CPU seconds the server has used so far (``$BENCH_SERVER_PID``, Linux /proc)."""
    pid = os.environ.get("BENCH_SERVER_PID")
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def drain(
    module: ModuleType, n: int, workers: int, startup_s: float, budget_s: float, stall_s: float
) -> None:
    """Start ``workers`` worker processes, wait until the counter reaches ``n``, stop them.

    The clock starts at the first completed job (with several workers and a
    ``consumers`` hook: once every worker consumes), so a library's start-up
    time (imports, connecting, its first poll) is reported apart from its rate. A
    library too slow to finish within ``budget_s`` of its first completed job
    is stopped there and its rate is taken over the jobs it finished (partial).
    """
    client = redis.Redis.from_url(URL)
    label = os.environ.get("BENCH_LABEL", module.__name__)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    logs = [LOG_DIR / f"{label}-w{i}.log" for i in range(workers)]
    ready = getattr(module, "consumers", None) if workers > 1 else None
    spawned = time.perf_counter()
    first: tuple[float, int, float | None, tuple[int, int] | None] | None = None
    partial = False
    try:
        procs.extend(spawn_worker(module, log) for log in logs)  # one at a time: see finally
        last_done, last_change = 0, spawned
        while True:
            done = int(client.get(COUNTER) or 0)
            now = time.perf_counter()
            if done and first is None and (ready is None or ready(client) >= workers):
                first = (now, done, _server_cpu_s(), _host_cpu())
            if done != last_done:
                last_done, last_change = done, now
            if done >= n:
                if first is None:  # all done before every worker was seen consuming
                    raise DrainError(f"{n} jobs done before all {workers} workers consumed")
                break
            if first is None and now - spawned > startup_s:
                raise DrainError(f"no job done {startup_s:.0f} s after the worker started")
            if first is not None and now - first[0] > budget_s:
                partial = True
                break
            if now - last_change > stall_s:
                raise DrainError(f"stalled: {done}/{n} jobs done, none for {stall_s:.0f} s")
            for proc, log in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    raise DrainError(
                        f"worker exited with code {proc.returncode} at {done}/{n}; see {log}"
                    )
            time.sleep(0.005)
        finished, finished_cpu, finished_host = now, _server_cpu_s(), _host_cpu()
    finally:
        _stop(procs)
    assert first is not None
    first_at, first_done, first_cpu, first_host = first
    elapsed = finished - first_at
    jobs = done - first_done
    server_cpu = None
    if first_cpu is not None and finished_cpu is not None and elapsed > 0:
        server_cpu = (finished_cpu - first_cpu) / elapsed
    host_cpu = None
    if first_host is not None and finished_host is not None:
        ticks = finished_host[1] - first_host[1]
        host_cpu = (finished_host[0] - first_host[0]) / ticks if ticks > 0 else None
    _emit(
        jobs=jobs,
        seconds=elapsed,
        rate=jobs / elapsed if elapsed > 0 else None,
        startup_s=first_at - spawned,
        total_s=finished - spawned,
        n=n,
        done=done,
        partial=partial,
        # Read after the workers stopped: more than n means a job ran twice.
        final_count=int(client.get(COUNTER) or 0),
        workers=workers,
        server_cpu=server_cpu,
        host_cpu=host_cpu,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adapter.py")
    parser.add_argument("module", help="adapter module, e.g. bench_arq")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info")
    enq = sub.add_parser("enqueue")
    enq.add_argument("n", type=int)
    enq.add_argument("--task", choices=("noop", "sleep"), default="noop")
    enq.add_argument("--bulk", action="store_true")
    dr = sub.add_parser("drain")
    dr.add_argument("n", type=int)
    dr.add_argument("--workers", type=int, default=1)
    dr.add_argument("--startup", type=float, default=120.0, help="seconds to the first job")
    dr.add_argument("--budget", type=float, default=1800.0, help="seconds after the first job")
    dr.add_argument("--stall", type=float, default=60.0, help="seconds without progress")
    lat = sub.add_parser("latency", help="scenario (e): enqueue-to-start at a steady rate")
    lat.add_argument("n", type=int)
    lat.add_argument("--rate", type=float, default=1000.0, help="jobs offered per second")
    mem = sub.add_parser("memory", help="scenario (f): one worker's RSS over a long run")
    mem.add_argument("n", type=int)
    mem.add_argument("--every", type=int, default=50_000, help="finished jobs per sample")
    mem.add_argument("--backlog", type=int, default=50_000, help="most jobs left waiting")
    mem.add_argument("--budget", type=float, default=1800.0, help="seconds for the whole run")
    sub.add_parser("worker")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    if args.command != "worker":
        # The orchestrator's SIGTERM unwinds through drain()'s finally: workers stop too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    module = importlib.import_module(args.module)
    if args.command == "info":
        _emit(
            **{k: v for k, v in module.INFO.items() if k != "distributions"},
            versions=_versions(module),
            python=platform.python_version(),
        )
    elif args.command == "enqueue":
        if args.bulk and module.INFO["enqueue_bulk"] is None:
            parser.error(f"{args.module} has no bulk enqueue API")
        seconds = _run(module.enqueue, args.task, args.n, args.bulk)
        _emit(jobs=args.n, seconds=seconds, rate=args.n / seconds)
    elif args.command in ("drain", "latency", "memory"):
        try:
            if args.command == "drain":
                drain(module, args.n, args.workers, args.startup, args.budget, args.stall)
            else:
                import _scenarios  # here, not on top: it imports this module

                if args.command == "latency":
                    _scenarios.latency(module, args.n, args.rate)
                else:
                    _scenarios.memory(module, args.n, args.every, args.backlog, args.budget)
        except DrainError as exc:
            _emit(error=str(exc))
            return 1
    else:
        _run(module.run_worker)
    return 0
