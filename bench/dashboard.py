"""How fast the dashboard's pages render with a million jobs in the history.

Starts its own valkey-server (127.0.0.1, AOF off) unless ``--url`` is given,
and fills one queue with the history of ``--jobs`` jobs spread over the last
hour, written directly with pipelined XADDs (with explicit stream ids, so the
times are spread out; running a million jobs through a worker would take many
minutes on this machine and measure the worker, not the dashboard):

- one stream entry per job in its priority stream (the fields the enqueue
  script writes), the group created after them (so nothing is lag);
- two events per job (``enqueued`` and ``succeeded``, or ``failed`` for 2 %);
- a DLQ entry per failed job, 10,000 delayed jobs, job hashes for the newest
  2,000 jobs (the rest "expired", as result_ttl would have them) and 10
  pending entries held by one consumer.

Then it renders each page through the ASGI app in process (httpx's
ASGITransport: no network, no uvicorn) and prints the first render and the
median of ``--repeat`` more, in ms::

    .venv/bin/python bench/dashboard.py                    # 1,000,000 jobs (~1 min to fill here)
    .venv/bin/python bench/dashboard.py --jobs 100000
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import httpx

from streamq import App
from streamq.dashboard import create_dashboard
from streamq.embedded import ValkeyServer
from streamq.keys import GROUP

QUEUE = "dash-bench"
TASKS = ("send_email", "resize_image", "charge_card", "sync_crm")
PIPE = 5_000
HASHES = 2_000
DELAYED = 10_000
FAIL_EVERY = 50  # 2 %


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(app: App, jobs: int) -> float:
    """Write the history; returns seconds taken."""
    began = time.perf_counter()
    redis = await app.redis()
    keys = app.keys
    priorities = app.settings.priorities
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    start_ms = now_ms - 3_600_000 + 5_000
    step = (3_600_000 - 10_000) / jobs
    pipe = redis.pipeline(transaction=False)
    queued = 0
    for i in range(jobs):
        t = int(start_ms + i * step)
        job_id = f"bench{i:08d}"
        task = TASKS[i % len(TASKS)]
        priority = priorities[i % len(priorities)]
        seq = i  # ids must grow within each stream: (ms, i) does
        msg_id = f"{t}-{seq}"
        payload = json.dumps({"args": [f"user{i}@example.com"], "kwargs": {}})
        pipe.xadd(
            keys.stream(priority),
            {"v": "1", "id": job_id, "task": task, "ct": "json", "payload": payload,
             "attempt": "1", "enq_ms": str(t)},
            id=msg_id,
        )  # fmt: skip
        pipe.xadd(
            keys.events,
            {"kind": "enqueued", "job": job_id, "task": task, "priority": priority, "msg": msg_id},
            id=f"{t}-{2 * seq}",
        )
        failed = i % FAIL_EVERY == 0
        pipe.xadd(
            keys.events,
            {"kind": "failed" if failed else "succeeded", "job": job_id, "task": task,
             "attempt": "1", "duration_ms": "12"},
            id=f"{t}-{2 * seq + 1}",
        )  # fmt: skip
        if failed:
            pipe.xadd(
                keys.dlq,
                {"v": "1", "id": job_id, "task": task, "ct": "json", "payload": payload,
                 "dlq_reason": "failed: ValueError", "dlq_error_type": "ValueError",
                 "dlq_error": f"bad address user{i}", "dlq_attempts": "1",
                 "dlq_origin": keys.stream(priority), "dlq_origin_id": msg_id,
                 "dlq_ms": str(t + 20)},
                id=f"{t + 20}-{seq}",
            )  # fmt: skip
        if i >= jobs - HASHES:
            pipe.hset(
                keys.job(job_id),
                mapping={"status": "failed" if failed else "succeeded", "task": task,
                         "attempts": "1", "priority": priority, "enqueued_ms": str(t),
                         "finished_ms": str(t + 12), "msg_id": msg_id, "result": "null"},
            )  # fmt: skip
            pipe.hset(keys.job(job_id), f"ev:{t}-{2 * seq}", "enqueued")
        queued += 1
        if queued >= PIPE:
            await pipe.execute()
            queued = 0
    for i in range(DELAYED):
        member = json.dumps(
            ["default", "v", "1", "id", f"later{i:06d}", "task", TASKS[i % 4], "ct", "json",
             "payload", '{"args":[],"kwargs":{}}', "attempt", "1"]
        )  # fmt: skip
        pipe.zadd(keys.delayed, {member: now_ms + 60_000 + i * 1000})
    await pipe.execute()
    for priority in priorities:
        await redis.xgroup_create(keys.stream(priority), GROUP, id="$", mkstream=True)
    stream = keys.stream(priorities[0])
    for i in range(10):
        await redis.xadd(stream, {"v": "1", "id": f"held{i}", "task": TASKS[0], "ct": "json",
                                  "payload": "{}", "attempt": "1"})  # fmt: skip
    await redis.xreadgroup(GROUP, "bench-host:4242:abcdef", {stream: ">"}, count=10)
    return time.perf_counter() - began


async def measure(app: App, jobs: int, repeat: int) -> list[tuple[str, float, float, int]]:
    dashboard = create_dashboard(app)
    base = f"/q/{QUEUE}"
    redis = await app.redis()
    newest = await redis.xrevrange(app.keys.dlq, "+", "-", count=1)
    dlq_id = newest[0][0].decode()
    pages = {
        "overview (first: chart cache cold)": f"{base}/",
        "overview": f"{base}/",
        "overview fragment (refresh)": f"{base}/?partial=1",
        "workers": f"{base}/workers",
        "jobs": f"{base}/jobs",
        "jobs status=failed": f"{base}/jobs?status=failed",
        "jobs task=charge_card": f"{base}/jobs?task=charge_card",
        "jobs status=running (none: scan cap)": f"{base}/jobs?status=running",
        "job (hash + story)": f"{base}/jobs/bench{jobs - 1:08d}",
        "job (expired, no time in id)": f"{base}/jobs/bench{0:08d}",
        "dlq": f"{base}/dlq",
        "dlq task=sync_crm": f"{base}/dlq?task=sync_crm",
        "dlq entry": f"{base}/dlq/{dlq_id}",
        "delayed": f"{base}/delayed",
        "delayed offset 5000": f"{base}/delayed?offset=5000",
        "schedules": f"{base}/schedules",
    }
    out = []
    transport = httpx.ASGITransport(app=dashboard)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        for name, path in pages.items():
            times = []
            size = 0
            for _ in range(1 if "first" in name else repeat + 1):
                began = time.perf_counter()
                response = await http.get(path)
                times.append((time.perf_counter() - began) * 1000)
                size = len(response.content)
                assert response.status_code in (200, 404), (path, response.status_code)
            rest = times[1:] or times
            out.append((name, times[0], statistics.median(rest), size))
    return out


async def run(url: str, jobs: int, repeat: int) -> None:
    async with App(QUEUE, redis_url=url) as app:
        redis = await app.redis()
        async for key in redis.scan_iter(match=app.keys.pattern(), count=1000):
            await redis.delete(key)
        fill_s = await fill(app, jobs)
        info = await redis.info("memory")
        print(f"filled {jobs:,} jobs' history in {fill_s:.1f} s "
              f"(valkey used_memory {info['used_memory_human']})")  # fmt: skip
        events = await redis.xlen(app.keys.events)
        print(f"events stream: {events:,} entries; DLQ {await redis.xlen(app.keys.dlq):,}")
        rows = await measure(app, jobs, repeat)
        print(f"\n| page | first ms | median of {repeat} ms | bytes |")
        print("|---|---:|---:|---:|")
        for name, first, median, size in rows:
            print(f"| {name} | {first:.1f} | {median:.1f} | {size:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url", help="a Redis URL to use (its queue dash-bench is replaced)")
    args = parser.parse_args()
    if args.url:
        anyio.run(run, args.url, args.jobs, args.repeat)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = ValkeyServer(Path(tmp) / "valkey", port=_free_port(),
                              extra_args=["--appendonly", "no"])  # fmt: skip
        server.start()
        try:
            anyio.run(run, server.url, args.jobs, args.repeat)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
