"""What ``durable=True`` costs: enqueue latency and throughput, with and without it.

Starts its own master and one replica (valkey-server, 127.0.0.1, AOF on with
``appendfsync everysec`` as the embedded default), then, for ``durable`` off
and on, on a fresh queue each time:

- latency: ``--singles`` enqueues one after the other (``Task.enqueue``):
  p50 and p99 wall time per call, and the client's CPU per call (process time);
- throughput: ``--batches`` calls of ``enqueue_many`` with ``--batch`` jobs
  each: jobs per second (wall), client CPU per job;
- the server's CPU per job (``INFO commandstats`` usec of every command,
  before and after, so WAIT and WAITAOF are in it).

Each setting runs ``--runs`` times (3 by default) and the median of each figure
is shown. Wall figures move with whatever else the machine runs; the CPU
figures much less. A durable enqueue waits for the replica's acknowledgement
(``WAIT 1``) and the master's AOF fsync (``WAITAOF 1 0``): on one machine both
are loopback round trips, so expect a few hundred microseconds; across
machines, add the network round trip to the replica.

    .venv/bin/python bench/durable_cost.py
    .venv/bin/python bench/durable_cost.py --singles 2000 --batches 50 --batch 100
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import redis
import structlog

from streamq import App, Settings
from streamq.embedded import ValkeyServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_usec(port: int) -> int:
    """Total usec of every command the server ran so far (INFO commandstats)."""
    with redis.Redis(port=port) as client:
        stats = client.info("commandstats")
    return sum(int(v["usec"]) for v in stats.values())


async def one_run(url: str, port: int, durable: bool, args: argparse.Namespace) -> dict[str, float]:
    app = App(
        f"durable-bench-{time.monotonic_ns()}", settings=Settings(redis_url=url, durable=durable)
    )

    @app.task(name="noop")
    async def noop(n: int) -> None:
        return None

    async with app:
        await noop.enqueue(0)  # connect, load the scripts
        usec0, cpu0 = server_usec(port), time.process_time()
        latencies = []
        for n in range(args.singles):
            started = time.perf_counter()
            await noop.enqueue(n)
            latencies.append(time.perf_counter() - started)
        cpu_single = (time.process_time() - cpu0) / args.singles
        usec1, cpu1 = server_usec(port), time.process_time()
        started = time.perf_counter()
        for _ in range(args.batches):
            await noop.enqueue_many([(n,) for n in range(args.batch)])
        wall = time.perf_counter() - started
        jobs = args.batches * args.batch
        usec2 = server_usec(port)
        redis_client = await app.redis()
        for key in [k async for k in redis_client.scan_iter(match=app.keys.pattern(), count=1000)]:
            await redis_client.delete(key)
    latencies.sort()
    return {
        "single_p50_us": latencies[len(latencies) // 2] * 1e6,
        "single_p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "single_client_cpu_us": cpu_single * 1e6,
        "single_server_us": (usec1 - usec0) / args.singles,
        "batch_jobs_per_s": jobs / wall,
        "batch_client_cpu_us_per_job": (time.process_time() - cpu1) / jobs * 1e6,
        "batch_server_us_per_job": (usec2 - usec1) / jobs,
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def show(results: dict[bool, dict[str, float]]) -> None:
    rows: list[tuple[str, str, Callable[[float], str]]] = [
        ("single_p50_us", "single enqueue, p50 latency", lambda v: f"{v:8.0f} us"),
        ("single_p99_us", "single enqueue, p99 latency", lambda v: f"{v:8.0f} us"),
        ("single_client_cpu_us", "single enqueue, client CPU", lambda v: f"{v:8.0f} us"),
        ("single_server_us", "single enqueue, server CPU", lambda v: f"{v:8.1f} us"),
        ("batch_jobs_per_s", "enqueue_many, jobs/s", lambda v: f"{v:8.0f}   "),
        ("batch_client_cpu_us_per_job", "enqueue_many, client CPU/job", lambda v: f"{v:8.1f} us"),
        ("batch_server_us_per_job", "enqueue_many, server CPU/job", lambda v: f"{v:8.1f} us"),
    ]
    print(f"{'':32} {'durable=False':>14} {'durable=True':>14}   ratio")
    for key, label, fmt in rows:
        off, on = results[False][key], results[True][key]
        ratio = on / off if off else float("nan")
        print(f"{label:32} {fmt(off):>14} {fmt(on):>14}   x{ratio:.2f}")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        quick = ["--repl-diskless-sync-delay", "0"]
        master = ValkeyServer(Path(directory) / "master", port=free_port(), extra_args=quick)
        master.start()
        replica = ValkeyServer(
            Path(directory) / "replica",
            port=free_port(),
            extra_args=[*quick, "--replicaof", "127.0.0.1", str(master.port)],
        )
        replica.start()
        try:
            with redis.Redis(port=master.port) as client:  # until the replica acknowledges
                client.set("bench:ready", 1)
                if client.wait(1, 20_000) < 1:
                    raise SystemExit("the replica did not come up")
                client.delete("bench:ready")
            url = f"redis://127.0.0.1:{master.port}"
            results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for run in range(args.runs):
                for durable in (False, True):
                    results[durable].append(await one_run(url, master.port or 0, durable, args))
                print(f"run {run + 1} of {args.runs} done")
            print(
                f"\n{args.singles} single enqueues, {args.batches} x enqueue_many({args.batch}); "
                f"median of {args.runs} runs; master + 1 replica on 127.0.0.1, "
                "appendonly yes, appendfsync everysec\n"
            )
            show({durable: median_of(runs) for durable, runs in results.items()})
        finally:
            replica.stop()
            master.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    anyio.run(main, parser.parse_args())
