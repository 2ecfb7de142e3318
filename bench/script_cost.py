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
import uuid
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aredis

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
    script = sum(stats.get(f"cmdstat_{c}", {"usec": 0})["usec"] for c in ("eval", "evalsha")) / n
    return script, cpu


async def _run(url: str, n: int) -> dict[str, tuple[float, float]]:
    app = App("cost", settings=Settings(redis_url=url))

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


# The floor: what a no-op job's life writes, as bare Lua with no checks. Field
# names and value sizes are those streamq writes (enqueue.lua, complete.lua).
_FLOOR_ENQUEUE = """
for j = 1, #ARGV do
  local id = ARGV[j]
  local msg = redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', id, 'task', 'noop',
    'ct', 'msgpack', 'payload', '\\x90', 'attempt', '1', 'enq_ms', '1764460000000')
  local ev = redis.call('XADD', KEYS[2], '*', 'kind', 'enqueued', 'job', id, 'task', 'noop',
    'priority', 'default', 'msg', msg, 'ts', '1764460000000')
  redis.call('HSET', KEYS[3] .. id, 'status', 'queued', 'task', 'noop', 'priority', 'default',
    'attempts', '0', 'enqueued_ms', '1764460000000', 'msg_id', msg, 'ev:' .. ev, 'enqueued')
end
"""
_FLOOR_FETCH = """
return redis.call('XREADGROUP', 'GROUP', 'g', 'c', 'COUNT', ARGV[1], 'STREAMS', KEYS[1], '>')
"""
_FLOOR_COMPLETE = """
local acks = {}
for j = 1, #ARGV, 2 do
  local id, msg = ARGV[j], ARGV[j + 1]
  acks[#acks + 1] = msg
  local started = redis.call('XADD', KEYS[2], '*', 'kind', 'started', 'job', id,
    'task', 'noop', 'attempt', '1', 'priority', 'default', 'deliveries', '1',
    'worker', 'host-12345-abcdef', 'ts', '1764460000001')
  local done = redis.call('XADD', KEYS[2], '*', 'kind', 'succeeded', 'job', id,
    'task', 'noop', 'attempt', '1', 'deliveries', '1', 'worker', 'host-12345-abcdef',
    'duration_ms', '0', 'ts', '1764460000002')
  redis.call('HSET', KEYS[3] .. id, 'started_ms', '1764460000001',
    'worker', 'host-12345-abcdef', 'attempts', '1', 'msg_id', msg, 'ev:' .. started, 'started',
    'status', 'succeeded', 'result', '\\xc0', 'finished_ms', '1764460000002',
    'duration_ms', '0', 'outcome_msg', msg .. '|host-12345-abcdef|1', 'ev:' .. done, 'succeeded')
  redis.call('PEXPIRE', KEYS[3] .. id, 3600000)
end
redis.call('XACK', KEYS[1], 'g', unpack(acks))
"""


async def _run_floor(url: str, n: int) -> dict[str, tuple[float, float]]:
    redis = aredis.Redis.from_url(url)
    try:
        await redis.flushall()
        stream, events, jobs = "{floor}:default", "{floor}:events", "{floor}:job:"
        await redis.xgroup_create(stream, "g", "0", mkstream=True)
        ids = [uuid.uuid4().hex for _ in range(n)]
        fetched: list[tuple[str, str]] = []

        async def enqueue() -> None:
            for start in range(0, n, 100):
                await redis.eval(_FLOOR_ENQUEUE, 3, stream, events, jobs, *ids[start : start + 100])

        async def fetch() -> None:
            while len(fetched) < n:
                for _, entries in await redis.eval(_FLOOR_FETCH, 1, stream, BATCH):
                    fetched.extend((fields[3].decode(), msg.decode()) for msg, fields in entries)

        async def complete() -> None:
            for start in range(0, n, BATCH):
                args = [x for pair in fetched[start : start + BATCH] for x in pair]
                await redis.eval(_FLOOR_COMPLETE, 3, stream, events, jobs, *args)

        return {
            "enqueue": await _phase(redis, n, enqueue),
            "fetch": await _phase(redis, n, fetch),
            "complete": await _phase(redis, n, complete),
        }
    finally:
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="no-op jobs per run (20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs; the best is shown (3)")
    parser.add_argument("--floor", action="store_true", help="also the bare writes' cost")
    args = parser.parse_args()
    kinds = {"streamq": _run, **({"floor": _run_floor} if args.floor else {})}
    best: dict[str, dict[str, tuple[float, float]]] = {kind: {} for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="streamq-script-cost-") as tmp:
        server = ValkeyServer(Path(tmp), port=_free_port(), extra_args=["--appendonly", "no"])
        server.start()
        try:
            for _ in range(args.runs):
                for kind, run in kinds.items():
                    for phase, (script, cpu) in anyio.run(run, server.url, args.n).items():
                        old = best[kind].get(phase, (float("inf"), float("inf")))
                        best[kind][phase] = (min(old[0], script), min(old[1], cpu))
        finally:
            server.stop()
    header = "".join(f" | {kind} script | {kind} server CPU" for kind in kinds)
    print(f"µs per job (best of {args.runs} runs of {args.n:,} jobs)")
    print(f"phase{header}")
    for phase in ("enqueue", "fetch", "complete"):
        cells = "".join(f" | {best[k][phase][0]:.1f} | {best[k][phase][1]:.1f}" for k in kinds)
        print(f"{phase}{cells}")
    totals = "".join(
        f" | {sum(s for s, _ in best[k].values()):.1f} | {sum(c for _, c in best[k].values()):.1f}"
        for k in kinds
    )
    print(f"total{totals}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
