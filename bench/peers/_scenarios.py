"""The single-worker scenarios: (e) enqueue-to-start latency and (f) memory over a long run.

Both start one worker process as the drain does (``worker_argv()``, its own
process group, stopped with SIGTERM then SIGKILL), wait until it has joined
the consumer group (``consumers``), then produce from this process, one
asyncio loop. An adapter that runs them defines, besides the usual:

- ``producer()``: an async context manager; the calls below run inside it,
  on a client connected before any clock starts;
- ``enqueue_stamped(at)``: enqueue one job whose handler, as its very first
  statement, takes ``time.time()`` and passes both to ``record_latency_async``;
- ``enqueue_noops(size)``: enqueue ``size`` no-op jobs with the bulk API;
- ``MEMORY_ENV``: environment for (f)'s worker (retention short enough to trim);
- ``history(client)``: what retention left in Redis (entries kept and ever added).

(e) ``latency``: job i is due at t0 + i/rate (an absolute schedule, so lateness
never accumulates); the producer sleeps until then, takes ``time.time()`` and
awaits one enqueue. Every handler records its start minus that time; the
percentiles are computed over all of them, read back from Redis.

(f) ``memory``: the producer enqueues in bulk chunks while fewer than
``backlog`` jobs wait (enqueued minus the done counter), and every ``every``
finished jobs samples the worker's RSS (VmRSS summed over its process group)
and valkey's ``used_memory``, printing one progress line per sample.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import redis
from _common import (
    CHUNK,
    COUNTER,
    LATENCIES,
    LOG_DIR,
    URL,
    DrainError,
    _emit,
    _host_cpu,
    _server_cpu_s,
    _stop,
    progress,
    spawn_worker,
)

STARTUP_S = 120.0  # from spawning the worker to its joining the consumer group
SETTLE_S = 1.0  # then this long idle, so start-up work is over before the first job
RECORD_WAIT_S = 30.0  # (e): after the last enqueue, for the last handlers to record
STALL_S = 60.0  # (f): no job finished for this long while some wait: stop
WARMUP = 0.1  # (f): samples before this share of the jobs are warm-up
LATENCY_WARMUP_S = 1.0  # (e): seconds of jobs offered, and not recorded, before measuring
BUCKETS_MS = (1, 2, 5, 10, 50)  # (e): the latency histogram's upper bounds


# -- the worker's process group, from /proc ----------------------------------------------


def _group_pids(pgid: int) -> list[int]:
    """Every process in the worker's process group: the worker and any children."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _group_proc_files(pgid: int, name: str) -> Iterator[str]:
    """/proc/<pid>/<name> of each process in the group (skipping ones that just exited)."""
    for pid in _group_pids(pgid):
        try:
            yield Path(f"/proc/{pid}/{name}").read_text()
        except OSError:
            continue


def group_rss_kb(pgid: int) -> int:
    """VmRSS of the worker's process group, in KiB."""
    total = 0
    for status in _group_proc_files(pgid, "status"):
        total += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
    return total


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) the worker's process group has used so far."""
    ticks = 0
    for stat in _group_proc_files(pgid, "stat"):
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """A reading of the CPU time used so far by the worker, the server and the machine."""

    at: float
    worker_s: float
    server_s: float | None
    host: tuple[int, int] | None

    @classmethod
    def take(cls, pgid: int) -> Usage:
        return cls(time.perf_counter(), group_cpu_s(pgid), _server_cpu_s(), _host_cpu())

    def since(self, start: Usage) -> dict[str, float | None]:
        """Each one's CPU use between ``start`` and this reading (1.0 = one core busy)."""
        wall = self.at - start.at
        if wall <= 0:
            return {"worker_cpu": None, "server_cpu": None, "host_cpu": None}
        server = None
        if self.server_s is not None and start.server_s is not None:
            server = (self.server_s - start.server_s) / wall
        host = None
        if self.host is not None and start.host is not None and self.host[1] > start.host[1]:
            host = (self.host[0] - start.host[0]) / (self.host[1] - start.host[1])
        return {"worker_cpu": (self.worker_s - start.worker_s) / wall, "server_cpu": server,
                "host_cpu": host}  # fmt: skip


# -- the worker ---------------------------------------------------------------------------


def _start_worker(
    module: ModuleType, client: redis.Redis, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], float]:
    """One worker process, once it has joined the consumer group; and how long that took.

    The caller stops it (``_stop``) in a ``finally``; a worker that does not join is stopped here.
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{os.environ.get('BENCH_LABEL', module.__name__)}-w0.log"
    spawned = time.perf_counter()
    proc = spawn_worker(module, log, extra_env)
    try:
        while module.consumers(client) < 1:
            if proc.poll() is not None:
                raise DrainError(f"worker exited with code {proc.returncode}; see {log}")
            if time.perf_counter() - spawned > STARTUP_S:
                raise DrainError(f"the worker did not join the group in {STARTUP_S:.0f} s")
            time.sleep(0.05)
    except BaseException:
        _stop([proc])
        raise
    joined = time.perf_counter() - spawned
    time.sleep(SETTLE_S)
    return proc, joined


# -- (e) enqueue-to-start latency -------------------------------------------------------


def latency(module: ModuleType, n: int, rate: float) -> None:
    """Offer ``n`` jobs at ``rate`` per second to one idle worker; emit the latency summary."""
    client = redis.Redis.from_url(URL)
    proc, startup_s = _start_worker(module, client)
    try:
        # Warm-up at the same rate, not recorded: lazy imports and new connections
        # (worker, job body, producer) would otherwise be measured as queueing.
        warm = int(rate * LATENCY_WARMUP_S)
        asyncio.run(_offer(module, warm, rate, LATENCY_WARMUP_S * 3 + 5))
        _wait_recorded(client, warm, proc)
        client.delete(LATENCIES)
        before = Usage.take(proc.pid)
        # Offering stops (partial) if it runs this late: the producer could not keep up.
        offered = asyncio.run(_offer(module, n, rate, n / rate * 1.5 + 5))
        complete = _wait_recorded(client, offered["sent"], proc)
        usage = Usage.take(proc.pid).since(before)
    finally:
        _stop([proc])
    entries = [entry.split() for entry in client.lrange(LATENCIES, 0, -1)]
    _emit(
        n=n,
        rate_target=rate,
        startup_s=startup_s,
        **offered,
        recorded=len(entries),
        partial=offered["sent"] < n or not complete,
        **latency_summary([(int(lat), int(at)) for lat, at in entries]),
        **usage,
    )


async def _offer(module: ModuleType, n: int, rate: float, limit_s: float) -> dict[str, Any]:
    """Enqueue job i at t0 + i/rate: sleep until due, stamp, one awaited enqueue."""
    async with module.producer():
        t0 = time.perf_counter() + 0.01
        lateness: list[float] = []
        sent_at: list[float] = []
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            if now - t0 > limit_s:
                break
            lateness.append(now - due)
            sent_at.append(now)
            await module.enqueue_stamped(time.time())
    span = sent_at[-1] - sent_at[0] if len(sent_at) > 1 else 0.0
    lateness.sort()
    return {
        "sent": len(sent_at),
        "offered_rate": (len(sent_at) - 1) / span if span > 0 else None,
        "offer_s": span,
        # How late the producer started each enqueue against its schedule (not in the latency).
        "producer_late_p99_ms": _quantile(lateness, 0.99) * 1000 if lateness else None,
        "producer_late_max_ms": lateness[-1] * 1000 if lateness else None,
    }


def _wait_recorded(client: redis.Redis, want: int, proc: subprocess.Popen[bytes]) -> bool:
    """Wait until ``want`` handlers recorded; False when RECORD_WAIT_S passed first."""
    deadline = time.perf_counter() + RECORD_WAIT_S
    while client.llen(LATENCIES) < want:
        if proc.poll() is not None:
            raise DrainError(f"worker exited with code {proc.returncode} during the run")
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.01)
    return True


def _quantile(ordered: list[Any], q: float) -> Any:
    """Nearest rank: the smallest value with at least ``q`` of them at or below it."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_summary(entries: list[tuple[int, int]]) -> dict[str, Any]:
    """Percentiles (ms) of the (latency µs, enqueued at µs) entries, a histogram, the slowest."""
    if not entries:
        return {}
    values = sorted(lat for lat, _ in entries)
    first = min(at for _, at in entries)
    edges = [-math.inf, *(b * 1000 for b in BUCKETS_MS), math.inf]
    histogram = {
        f"≤{hi / 1000:g} ms" if hi != math.inf else f">{BUCKETS_MS[-1]} ms": sum(
            1 for v in values if lo < v <= hi
        )
        for lo, hi in itertools.pairwise(edges)
    }
    quantiles = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}
    # When the slowest jobs were enqueued, in seconds into the run: periodic stalls show.
    slowest = [
        {"ms": lat / 1000, "at_s": round((at - first) / 1e6, 3)}
        for lat, at in sorted(entries, reverse=True)[:10]
    ]
    # Start-up (the worker's and the job body's first connections) shows in the first second.
    steady = sorted(lat for lat, at in entries if at - first >= 1e6)
    return {
        **{f"{name}_ms": _quantile(values, q) / 1000 for name, q in quantiles.items()},
        "p99_after_1s_ms": _quantile(steady, 0.99) / 1000 if steady else None,
        "max_ms": values[-1] / 1000,
        "mean_ms": statistics.fmean(values) / 1000,
        "min_ms": values[0] / 1000,
        "histogram": histogram,
        "slowest": slowest,
    }


# -- (f) memory over a long run ---------------------------------------------------------------


@dataclass
class Feed:
    """(f)'s producer loop: a bounded backlog of no-op jobs, a sample every ``every`` done."""

    module: ModuleType
    client: redis.Redis
    proc: subprocess.Popen[bytes]
    n: int
    every: int
    backlog: int
    budget_s: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    enqueued: int = 0
    started: float = field(default_factory=time.perf_counter)

    def sample(self, done: int) -> None:
        now = time.perf_counter() - self.started
        entry = {
            "done": done,
            "enqueued": self.enqueued,
            "t_s": round(now, 3),
            "rss_kb": group_rss_kb(self.proc.pid),
            "used_memory": int(self.client.info("memory")["used_memory"]),
        }
        self.samples.append(entry)
        rate = done / now if now > 0 else 0.0
        progress(
            f"{done:>9,}/{self.n:,} done  worker RSS {entry['rss_kb'] / 1024:6.1f} MiB  "
            f"valkey used {entry['used_memory'] / 2**20:6.1f} MiB  {now:6.1f} s  {rate:,.0f} jobs/s"
        )

    def why_stop(self, done: int, since_progress_s: float) -> str | None:
        if self.proc.poll() is not None:
            return f"the worker exited with code {self.proc.returncode}"
        if time.perf_counter() - self.started > self.budget_s:
            return f"budget of {self.budget_s:.0f} s spent"
        if since_progress_s > STALL_S and done < self.enqueued:
            return f"stalled: no job finished for {STALL_S:.0f} s"
        return None

    async def run(self) -> str | None:
        """Feed and sample until ``n`` jobs are done; why it stopped early, or None."""
        self.started = time.perf_counter()
        self.sample(0)
        mark, last_done, last_change = self.every, 0, self.started
        async with self.module.producer():
            while True:
                # A sync GET: this loop is the process's only task, so blocking costs nothing.
                done = int(self.client.get(COUNTER) or 0)
                if done != last_done:
                    last_done, last_change = done, time.perf_counter()
                stopped = self.why_stop(done, time.perf_counter() - last_change)
                if done >= mark or done >= self.n or stopped:
                    self.sample(done)
                    mark = (done // self.every + 1) * self.every
                if done >= self.n or stopped:
                    return stopped
                if self.enqueued < self.n and self.enqueued - done < self.backlog:
                    size = min(CHUNK, self.n - self.enqueued)
                    await self.module.enqueue_noops(size)
                    self.enqueued += size
                else:
                    await asyncio.sleep(0.01)


def memory(module: ModuleType, n: int, every: int, backlog: int, budget_s: float) -> None:
    """Run ``n`` no-op jobs through one worker with retention on; emit its RSS samples."""
    client = redis.Redis.from_url(URL)
    proc, startup_s = _start_worker(module, client, module.MEMORY_ENV)
    feed = Feed(module, client, proc, n, every, backlog, budget_s)
    try:
        before = Usage.take(proc.pid)
        stopped = asyncio.run(feed.run())
        usage = Usage.take(proc.pid).since(before)
    finally:
        _stop([proc])
    last = feed.samples[-1]
    _emit(
        n=n,
        every=every,
        backlog=backlog,
        env=module.MEMORY_ENV,
        startup_s=startup_s,
        done=last["done"],
        seconds=last["t_s"],
        rate=last["done"] / last["t_s"] if last["t_s"] > 0 else None,
        partial=stopped is not None,
        stopped=stopped,
        **memory_summary(feed.samples, n),
        history=module.history(client),
        **usage,
        samples=feed.samples,
    )


def memory_summary(samples: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """RSS after warm-up (the first WARMUP of the jobs): first, end, min, max, spread."""
    summary: dict[str, Any] = {
        "valkey_start": samples[0]["used_memory"],
        "valkey_end": samples[-1]["used_memory"],
        "valkey_max": max(s["used_memory"] for s in samples),
        "rss_start_kb": samples[0]["rss_kb"],
        "rss_end_kb": samples[-1]["rss_kb"],
    }
    warm = [s["rss_kb"] for s in samples if s["done"] >= n * WARMUP]
    if warm:
        median = statistics.median(warm)
        summary |= {
            "rss_warm_kb": warm[0],
            "rss_min_kb": min(warm),
            "rss_max_kb": max(warm),
            "rss_median_kb": median,
            "rss_max_dev_pct": max(abs(r - median) for r in warm) / median * 100,
            "warm_samples": len(warm),
        }
    return summary
