"""Redis's cost per job, script by script, for a no-op job's whole life.

Starts its own valkey-server (127.0.0.1, AOF off; ``STREAMQ_VALKEY_SERVER``
picks another binary), then drives the scripts the way a worker does, with
no handler in between: ``enqueue_many`` N jobs, ``fetch`` them 50 at a time,
and ``complete`` them as succeeded 50 at a time, each outcome carrying its
lazy "started" mark (the common path of a short job). For each phase it
prints the script time per job (``INFO commandstats``: EVALSHA, which
includes the commands the script runs) and the server process's CPU per job
(``INFO cpu``: parsing and replies too). Best of ``--runs``, so a busy
machine shows as noise in fewer figures.

    .venv/bin/python bench/script_cost.py --n 20000
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from streamq import App, Settings
from streamq.embedded import ValkeyServer
from streamq.keys import GROUP
from streamq.scripts import Outcome

BATCH = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _cpu(redis: Any) -> float:
    info: dict[str, Any] = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _phase(redis: Any, n: int, work: Any) -> tuple[float, float]:
    """(script µs/job, server CPU µs/job) of ``work()``."""
    await redis.config_resetstat()
    cpu = await _cpu(redis)
    await work()
    cpu = (await _cpu(redis) - cpu) / n * 1e6
    stats: dict[str, Any] = await redis.info("commandstats")
    script = stats.get("cmdstat_evalsha", {"usec": 0})["usec"] / n
    return script, cpu


async def _run(url: str, n: int, queue: str) -> dict[str, tuple[float, float]]:
    app = App(queue, settings=Settings(redis_url=url))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app:
        redis = await app.redis()
        await redis.flushall()  # each run starts from the same empty server
        scripts = await app.scripts()
        keys = app.keys
        stream = keys.stream("default")
        consumer = "bench-1"
        fetched: list[tuple[bytes, dict[bytes, bytes]]] = []

        async def enqueue() -> None:
            for start in range(0, n, 1000):
                await noop.enqueue_many([()] * min(1000, n - start))

        async def fetch() -> None:
            streams = [keys.stream(p) for p in app.settings.priorities]
            while len(fetched) < n:
                for _, entries in await scripts.fetch(streams, GROUP, consumer, BATCH):
                    fetched.extend((m, f) for m, f in entries if f is not None)

        async def complete() -> None:
            now = int(time.time() * 1000)
            for start in range(0, n, BATCH):
                outcomes = [
                    Outcome(
                        stream=stream,
                        job_key=keys.job(f[b"id"].decode()),
                        msg_id=m,
                        deliveries=1,
                        job_id=f[b"id"].decode(),
                        task="noop",
                        attempt=1,
                        status="succeeded",
                        result_or_error_type=b"\x80",
                        error="",
                        traceback="",
                        duration_ms=0,
                        priority="default",
                        started_ms=now,
                    )  # fmt: skip
                    for m, f in fetched[start : start + BATCH]
                ]
                replies = await scripts.complete(
                    keys.events, outcomes, delayed=keys.delayed, dlq=keys.dlq,
                    group=GROUP, consumer=consumer, now_ms=now, result_ttl_ms=3_600_000,
                )  # fmt: skip
                assert all(r == 1 for r in replies), replies

        return {
            "enqueue": await _phase(redis, n, enqueue),
            "fetch": await _phase(redis, n, fetch),
            "complete": await _phase(redis, n, complete),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="no-op jobs per run (20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs; the best is shown (3)")
    args = parser.parse_args()
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="streamq-script-cost-") as tmp:
        server = ValkeyServer(Path(tmp), port=_free_port(), extra_args=["--appendonly", "no"])
        server.start()
        try:
            for _ in range(args.runs):
                got = anyio.run(_run, server.url, args.n, "cost")
                for phase, (script, cpu) in got.items():
                    old = best.get(phase, (float("inf"), float("inf")))
                    best[phase] = (min(old[0], script), min(old[1], cpu))
        finally:
            server.stop()
    print(f"{'phase':<9} {'script µs/job':>14} {'server CPU µs/job':>17}")
    for phase, (script, cpu) in best.items():
        print(f"{phase:<9} {script:>14.1f} {cpu:>17.1f}")
    total_script = sum(s for s, _ in best.values())
    total_cpu = sum(c for _, c in best.values())
    print(f"{'total':<9} {total_script:>14.1f} {total_cpu:>17.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
