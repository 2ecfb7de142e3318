"""The server's reclaim cost with 1, 10 and 50 workers and a 100k-entry PEL, old code vs new.

Starts its own valkey-server (127.0.0.1, AOF off), enqueues ``--pel`` jobs
and delivers them all to one consumer that never acks: a PEL of that size in
which nothing is stale (visibility timeout 600 s). Then, for each worker
count, it runs that many *simulated workers* in one process: each is a
``Fetcher`` on its own consumer name (with its own ``Scripts``, as a worker
process has) that calls ``Fetcher.reclaim`` once per janitor interval, the
phases spread evenly over the interval, as ``Worker._fetch_loop`` does. After
one interval of warm-up it measures ``--seconds`` of:

- server CPU: ``INFO cpu`` (used_cpu_user + used_cpu_sys) delta, ms per second;
- script time: ``INFO commandstats`` EVALSHA usec delta (only reclaim runs), ms per s;
- script calls per second, and the longest single call (``SLOWLOG``, threshold 0).

Each setting is repeated ``--reps`` times; the table shows medians. The code
measured is whatever ``streamq`` imports: ``--old DIR`` runs the same
measurement in a child process with ``PYTHONPATH=DIR`` (a copy of the old
code) and another with this checkout, and prints both::

    git archive 68a1936 | (mkdir -p /tmp/streamq-old && tar -x -C /tmp/streamq-old)
    PYTHONPATH=$PWD .venv/bin/python bench/reclaim_cost.py --old /tmp/streamq-old

CPU time, not wall time: the machine is shared, and the server's CPU use is
what grows with the workers. About 2 x 3 x reps x (seconds + interval) s, plus
the enqueue (about 10 s for 100k).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import anyio

from streamq import App, Settings
from streamq.embedded import ValkeyServer
from streamq.keys import GROUP
from streamq.scripts import Scripts
from streamq.worker.fetch import Fetcher

HERE = Path(__file__).resolve().parent.parent
QUEUE = "reclaim-bench"
VISIBILITY_S = 600.0
CHUNK = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_app(url: str, interval_s: float) -> App:
    app = App(
        QUEUE,
        redis_url=url,
        settings=Settings(visibility_timeout_s=VISIBILITY_S, janitor_interval_s=interval_s),
    )

    @app.task(name="noop")
    async def noop() -> None: ...

    return app


async def fill(url: str, pel: int) -> None:
    """``pel`` jobs delivered to consumer 'alive', never acked."""
    async with make_app(url, 1.0) as app:
        task = app.tasks["noop"]
        for start in range(0, pel, CHUNK):
            await task.enqueue_many([() for _ in range(min(CHUNK, pel - start))])
        redis = await app.redis()
        stream = app.keys.stream("default")
        held = 0
        while held < pel:
            got = cast(
                list[tuple[bytes, list[Any]]],
                await redis.xreadgroup(GROUP, "alive", {stream: ">"}, count=10_000),
            )
            held += len(got[0][1])


async def freshen(url: str) -> None:
    """Reset every pending entry's idle time, so nothing becomes stale during a run."""
    async with make_app(url, 1.0) as app:
        redis = await app.redis()
        stream = app.keys.stream("default")
        low = "-"
        while True:
            rows = await redis.xpending_range(stream, GROUP, low, "+", 10_000)
            if not rows:
                return
            ids = [cast(bytes, r["message_id"]) for r in rows]
            await redis.xclaim(stream, GROUP, "alive", 0, ids, idle=0, justid=True)
            low = "(" + ids[-1].decode()


async def snapshot(redis: Any) -> tuple[float, int, int]:
    cpu = await redis.info("cpu")
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return used, int(stats.get("usec", 0)), int(stats.get("calls", 0))


async def measure(app: App, workers: int, rep: int, seconds: float) -> dict[str, float]:
    redis = await app.redis()
    interval = app.settings.janitor_interval_s
    fetchers = [
        Fetcher(redis, Scripts(redis), app.keys, app.settings, f"bench-{workers}-{rep}-{i}", 100)
        for i in range(workers)
    ]
    await fetchers[0].ensure_groups()
    began = time.monotonic() + 0.05
    start_at = began + interval  # one interval of warm-up
    end_at = start_at + seconds
    marks: dict[str, Any] = {}

    async def loop(fetcher: Fetcher, offset: float) -> None:
        tick = began + offset
        while tick < end_at:
            await anyio.sleep(max(0.0, tick - time.monotonic()))
            got = await fetcher.reclaim(10)
            assert not got, "a message became stale: the PEL must be fresh"
            tick += interval

    async def meter() -> None:
        await anyio.sleep(max(0.0, start_at - time.monotonic()))
        await redis.slowlog_reset()
        marks["before"] = await snapshot(redis), time.monotonic(), time.process_time()
        await anyio.sleep(max(0.0, end_at - time.monotonic()))
        marks["after"] = await snapshot(redis), time.monotonic(), time.process_time()
        marks["slowlog"] = await redis.slowlog_get(-1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(meter)
        for i, fetcher in enumerate(fetchers):
            tg.start_soon(loop, fetcher, i * interval / workers)
    (cpu0, usec0, calls0), t0, p0 = marks["before"]
    (cpu1, usec1, calls1), t1, p1 = marks["after"]
    wall = t1 - t0
    longest = max(
        (e["duration"] for e in marks["slowlog"] if b"evalsha" in (e["command"] or b"").lower()),
        default=0,
    )
    return {
        "server_cpu_ms_per_s": (cpu1 - cpu0) * 1000 / wall,
        "script_ms_per_s": (usec1 - usec0) / 1000 / wall,
        "calls_per_s": (calls1 - calls0) / wall,
        "longest_call_ms": longest / 1000,
        "client_cpu_ms_per_s": (p1 - p0) * 1000 / wall,
    }


async def child(url: str, workers: list[int], reps: int, seconds: float, interval: float) -> None:
    async with make_app(url, interval) as app:
        redis = await app.redis()
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.config_set("slowlog-max-len", 100_000)
        results: dict[str, list[dict[str, float]]] = {}
        for n in workers:
            results[str(n)] = [await measure(app, n, rep, seconds) for rep in range(reps)]
        print(json.dumps(results))


def run_child(code: Path, args: argparse.Namespace, url: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [
        sys.executable, __file__, "--child", url, "--workers", *map(str, args.workers),
        "--reps", str(args.reps), "--seconds", str(args.seconds), "--interval", str(args.interval),
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return cast(dict[str, Any], json.loads(out.strip().splitlines()[-1]))


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| code | workers | server CPU ms/s | reclaim script ms/s | script calls/s "
        "| longest call ms | client CPU ms/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for code, by_workers in results.items():
        for n, reps in by_workers.items():

            def med(key: str, reps: list[dict[str, float]] = reps) -> float:
                return statistics.median(r[key] for r in reps)

            rows.append(
                f"| {code} | {n} | {med('server_cpu_ms_per_s'):.1f} | {med('script_ms_per_s'):.1f}"
                f" | {med('calls_per_s'):.0f} | {med('longest_call_ms'):.2f}"
                f" | {med('client_cpu_ms_per_s'):.1f} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="a copy of the old code: measure it too")
    parser.add_argument("--pel", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=1.0, help="janitor interval, s")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        anyio.run(child, args.child, args.workers, args.reps, args.seconds, args.interval)
        return
    with tempfile.TemporaryDirectory(prefix="reclaim-bench-") as tmp:
        server = ValkeyServer(
            Path(tmp), port=free_port(), extra_args=("--appendonly", "no", "--save", "")
        )
        server.start()
        try:
            print(f"filling a PEL of {args.pel:,} entries ...", flush=True)
            anyio.run(fill, server.url, args.pel)
            codes = {"new": HERE} if args.old is None else {"old": args.old, "new": HERE}
            results: dict[str, dict[str, Any]] = {}
            for name, code in codes.items():
                anyio.run(freshen, server.url)
                print(f"measuring the {name} code ({code}) ...", flush=True)
                results[name] = run_child(code, args, server.url)
        finally:
            server.stop()
    print(json.dumps(results))
    print(
        f"\nPEL {args.pel:,} (nothing stale), janitor interval {args.interval} s, "
        f"{args.seconds} s measured after 1 interval of warm-up; medians of {args.reps}\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
