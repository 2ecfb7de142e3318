"""Where a drain's time goes: client CPU per job, and the server's cost per job by command.

Starts its own valkey-server (127.0.0.1, AOF off), bulk-enqueues N no-op jobs,
then drains them in this process with ``Worker(burst=True)``. It prints the
drain rate, the worker's CPU per job, and valkey's ``INFO commandstats`` per
job (EVALSHA's time includes the commands its scripts run; they are listed
too). ``--body incr`` gives each job the same body as ``make bench`` (one
``INCR`` through its own redis-py client), so the body's share can be compared
with the queue's. ``--py-spy out.txt`` re-runs this under py-spy (``pip install
py-spy``) and writes collapsed stacks; ``--cprofile`` prints the functions
with the most own time (cProfile inflates small calls; prefer py-spy).

    .venv/bin/python bench/profile_drain.py --n 20000 --body incr
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aredis
import structlog

from streamq import App, Settings, Worker
from streamq.embedded import ValkeyServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drain(
    url: str, n: int, body: str, concurrency: int, profile: bool, signed: bool = False
) -> None:
    settings = Settings(redis_url=url)
    if signed:  # every entry signed by the producer, verified by the worker
        key = {"k1": b"profile-secret-0123456789abcdef"}
        settings = Settings(
            redis_url=url, signing_keys=key, signing_key_id="k1", require_signatures=True
        )
    app = App("profile", settings=settings)
    client = aredis.Redis.from_url(url, max_connections=512)

    @app.task(name="noop")
    async def noop() -> None:
        if body == "incr":
            await client.incr("profile:done")

    async with app:
        redis = await app.redis()
        await redis.config_resetstat()
        server_cpu = await _server_cpu_s(redis)
        started, enqueue_cpu = time.perf_counter(), time.process_time()
        for start in range(0, n, 1000):
            await noop.enqueue_many([()] * min(1000, n - start))
        enqueue_s = time.perf_counter() - started
        enqueue_cpu = time.process_time() - enqueue_cpu
        print(
            f"enqueue_many: {n / enqueue_s:,.0f} jobs/s; producer CPU "
            f"{enqueue_cpu / n * 1e6:.1f} us/job"
        )
        enqueue_server = (await _server_cpu_s(redis) - server_cpu) / n * 1e6
        enqueue_stats: dict[str, Any] = await redis.info("commandstats")
        await redis.config_resetstat()
        server_cpu = await _server_cpu_s(redis)
        profiler = cProfile.Profile() if profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        await Worker(app, concurrency=concurrency, burst=True).run()
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"drain: {n / wall:,.0f} jobs/s; worker CPU {cpu / n * 1e6:.1f} us/job "
            f"({cpu / wall:.0%} of a core)"
        )
        drain_server = (await _server_cpu_s(redis) - server_cpu) / n * 1e6
        stats: dict[str, Any] = await redis.info("commandstats")
        print(
            f"server CPU (INFO cpu): enqueue {enqueue_server:.1f} + drain {drain_server:.1f}"
            f" = {enqueue_server + drain_server:.1f} us/job"
        )
        print(
            "enqueue commandstats:",
            ", ".join(
                f"{name.removeprefix('cmdstat_')} {row['usec'] / n:.1f}"
                for name, row in sorted(enqueue_stats.items(), key=lambda kv: -kv[1]["usec"])[:4]
            ),
            "us/job",
        )
        print("drain: server time per job (EVALSHA includes its scripts' commands):")
        for name, row in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:10]:
            print(
                f"  {name.removeprefix('cmdstat_'):<12} {row['usec'] / n:6.1f} us/job  "
                f"{row['calls']:>7} calls  {row['usec_per_call']:8.1f} us/call"
            )
        await client.aclose()
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


async def _server_cpu_s(redis: Any) -> float:
    """The server process's CPU seconds so far (user + sys): its whole cost,
    parsing and replies included, where commandstats time only the commands."""
    cpu: dict[str, Any] = await redis.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="no-op jobs (20000)")
    parser.add_argument("--body", choices=["none", "incr"], default="none")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--signed", action="store_true", help="sign and verify every entry")
    parser.add_argument("--cprofile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--py-spy", type=Path, help="write py-spy collapsed stacks here")
    args = parser.parse_args()
    if args.py_spy:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        argv = [a for a in sys.argv[1:] if a != "--py-spy" and a != str(args.py_spy)]
        cmd = [spy, "record", "-r", "500", "-f", "raw", "-o", str(args.py_spy), "--"]
        return subprocess.call([*cmd, sys.executable, __file__, *argv])
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="streamq-profile-") as tmp:
        server = ValkeyServer(Path(tmp), port=_free_port(), extra_args=["--appendonly", "no"])
        server.start()
        try:
            anyio.run(
                _drain, server.url, args.n, args.body, args.concurrency, args.cprofile, args.signed
            )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
