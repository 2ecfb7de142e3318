"""Shared machinery of the chaos scenarios: sizes, seeds, servers, worker processes, analysis.

Sizes: ``STREAMQ_CHAOS_SCALE`` (default 0.1) multiplies every scenario's
full CHAOS-PLAN size; ``1`` reproduces the full run. Each scenario also has a
floor, so a small scale still exercises it. ``STREAMQ_CHAOS_SEED`` seeds every
random choice (default fixed, so a failure can be replayed).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from anyio.abc import Process
from redis.asyncio import Redis

from streamq import App
from streamq.embedded import ValkeyServer
from streamq.keys import GROUP
from tests.apps.chaos_app import (
    JANITOR_ENV,
    LEDGER_KEY_ENV,
    QUEUE_ENV,
    VIS_ENV,
    Ledger,
    chaos_settings,
    register,
)
from tests.apps.process import ROOT
from tests.conftest import subprocess_env

SCALE = float(os.environ.get("STREAMQ_CHAOS_SCALE", "0.1"))
SEED = int(os.environ.get("STREAMQ_CHAOS_SEED", "20261123"))
START_TIMEOUT_S = 30.0
"""Interpreter start and imports of a worker child on a loaded 2-core machine."""


def scaled(full: int, floor: int) -> int:
    """``full`` (the CHAOS-PLAN size) times the scale, never below ``floor``."""
    return max(floor, round(full * SCALE))


def time_budget_s(base_s: float, per_scale_s: float) -> float:
    """A per-test timeout that grows with the scale (pytest's default is 120 s)."""
    return base_s + per_scale_s * SCALE


def rng(scenario: str) -> random.Random:
    """One seeded generator per scenario, so scenarios do not shift each other's draws."""
    return random.Random(f"{SEED}:{scenario}")


# -- reporting -----------------------------------------------------------------------

FIGURES = "streamq-chaos-figures"
"""The test report property that carries a scenario's figures line."""


def emit_figures(node: pytest.Item, scenario: str, figures: Mapping[str, Any]) -> None:
    """Record one scenario's figures: stderr (``-s``), the terminal summary, a results file.

    The summary reads them from the test reports (``user_properties``), which
    pytest-xdist sends back from its worker processes.
    """
    line = json.dumps({"scenario": scenario, "scale": SCALE, "seed": SEED, **figures})
    sys.stderr.write(f"CHAOS {line}\n")
    node.user_properties.append((FIGURES, line))
    if path := os.environ.get("STREAMQ_CHAOS_RESULTS"):
        with Path(path).open("a") as handle:
            handle.write(line + "\n")


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 1)

    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 1)}


# -- waiting ---------------------------------------------------------------------------


async def wait_for(
    condition: Callable[[], Awaitable[bool]],
    timeout_s: float,
    description: str,
    interval_s: float = 0.05,
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout_s``."""
    with anyio.move_on_after(timeout_s):
        # Polling is the point: the state lives in Redis or another process.
        while not await condition():  # noqa: ASYNC110
            await anyio.sleep(interval_s)
        return
    pytest.fail(f"timed out after {timeout_s} s waiting for {description}")


# -- servers -----------------------------------------------------------------------------


def queue_ledger_key(queue: str) -> str:
    """The execution ledger of a queue's workers: outside streamq's keys, same slot."""
    return f"chaosledger:{{{queue}}}:exec"


def worker_env(
    url: str, queue: str, vis_s: float, janitor_s: float, **extra: str
) -> dict[str, str]:
    """Environment of a chaos_app worker child for this queue and these timings."""
    return subprocess_env(
        url,
        **{QUEUE_ENV: queue, VIS_ENV: str(vis_s), JANITOR_ENV: str(janitor_s),
           LEDGER_KEY_ENV: queue_ledger_key(queue), **extra},
    )  # fmt: skip


def producer_app(url: str, queue: str, vis_s: float, janitor_s: float) -> App:
    """The test's own App on the workers' queue, with the same tasks (no ledger)."""
    return register(App(queue, settings=chaos_settings(url, vis_s, janitor_s)), Ledger(None, ""))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def valkey_server(
    directory: Path, *, appendfsync: str = "everysec", extra_args: Sequence[str] = ()
) -> AsyncIterator[ValkeyServer]:
    """A private valkey-server on a free loopback port, killed on the way out."""
    server = ValkeyServer(
        directory, port=free_port(), appendfsync=appendfsync, extra_args=tuple(extra_args)
    )
    await anyio.to_thread.run_sync(server.start)
    try:
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.kill)


# -- worker processes ----------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """One ``python -m streamq worker`` child; its stdout and stderr go to ``log``."""

    index: int
    process: Process
    log: Path
    spawned_s: float = field(default_factory=time.monotonic)
    ready_after_s: float | None = None
    """Seconds from spawn to its "worker started" log line."""
    killed_ms: int | None = None
    consumer: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and self.killed_ms is None

    async def records(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (a traceback or a half-written last line is skipped)."""
        text = await anyio.Path(self.log).read_text(errors="replace")
        out = []
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    async def ready(self) -> bool:
        if self.consumer is None:
            for record in await self.records():
                if record.get("event") == "worker started":
                    self.consumer = str(record["worker"])
                    self.ready_after_s = time.monotonic() - self.spawned_s
                    break
        return self.consumer is not None

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)


class WorkerPool:
    """Worker children of one test: spawn, SIGKILL, and kill-and-reap all on exit."""

    def __init__(
        self, directory: Path, env: Mapping[str, str], app_path: str, *options: str
    ) -> None:
        self.directory = directory
        self.env = dict(env)
        self.args = [sys.executable, "-m", "streamq", "worker", app_path, *options]
        self.workers: list[WorkerProcess] = []
        self.directory.mkdir(parents=True, exist_ok=True)

    def _open_log(self, index: int) -> tuple[Path, int]:
        path = self.directory / f"worker-{index}.log"
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    async def spawn(self) -> WorkerProcess:
        index = len(self.workers)
        path, fd = self._open_log(index)
        try:
            process = await anyio.open_process(
                self.args, cwd=ROOT, env=self.env, stdout=fd, stderr=fd
            )
        finally:
            os.close(fd)
        worker = WorkerProcess(index, process, path)
        self.workers.append(worker)
        return worker

    async def spawn_ready(
        self, count: int, timeout_s: float = START_TIMEOUT_S
    ) -> list[WorkerProcess]:
        started = [await self.spawn() for _ in range(count)]

        async def all_ready() -> bool:
            for w in started:
                if w.process.returncode is not None:
                    log = await anyio.Path(w.log).read_text(errors="replace")
                    pytest.fail(f"worker {w.pid} exited with {w.process.returncode}:\n{log}")
                if not await w.ready():
                    return False
            return True

        await wait_for(all_ready, timeout_s, f"{count} workers to start", 0.02)
        return started

    @property
    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive]

    async def kill(self, worker: WorkerProcess) -> int:
        """SIGKILL one worker and reap it; returns the wall-clock ms of the kill."""
        worker.killed_ms = int(time.time() * 1000)
        worker.process.kill()
        with anyio.fail_after(10):
            await worker.process.wait()
        return worker.killed_ms

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for worker in self.workers:
                if worker.process.returncode is None:
                    worker.process.kill()  # SIGKILL also ends a SIGSTOPped child
                with anyio.move_on_after(10):
                    await worker.process.wait()
                await worker.process.aclose()

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def kill_and_replace(
    pool: WorkerPool,
    rng: random.Random,
    *,
    every_s: float,
    workers: int,
    done: Callable[[], Awaitable[bool]],
    deadline_s: float,
) -> int:
    """SIGKILL a random worker about every ``every_s`` and start a replacement, until ``done``.

    A worker takes longer than a second to start on a loaded 2-core machine,
    so a kill also waits until at most one replacement is still starting:
    otherwise kills outpace starts until no worker is left, and recovery times
    would measure an empty pool rather than streamq. Returns the kill count.
    """

    async def enough_ready() -> bool:
        ready = [await w.ready() for w in pool.alive]
        return sum(ready) >= workers - 1

    kills = 0
    deadline = time.monotonic() + deadline_s
    while not await done():
        assert time.monotonic() < deadline, f"not done within {deadline_s} s ({kills} kills)"
        await anyio.sleep(every_s * rng.uniform(0.8, 1.2))
        await wait_for(enough_ready, START_TIMEOUT_S, "a replacement worker")
        await pool.kill(rng.choice([w for w in pool.alive if w.consumer is not None]))
        kills += 1
        await pool.spawn()
    return kills


def pid_of_consumer(consumer: str) -> int:
    """Consumer names are ``host:pid:random``."""
    return int(consumer.split(":")[-2])


# -- reading a queue's state back from Redis ------------------------------------------------


async def statuses(app: App, job_ids: Iterable[str], chunk: int = 1000) -> dict[str, str | None]:
    """Each job's ``status`` field (None: no job hash), read in pipelined chunks."""
    redis = await app.redis()
    ids = list(job_ids)
    out: dict[str, str | None] = {}
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for jid in part:
                pipe.hget(app.keys.job(jid), "status")
            replies = cast(list[bytes | None], await pipe.execute())
        out.update(
            {jid: None if r is None else r.decode() for jid, r in zip(part, replies, strict=True)}
        )
    return out


async def xrange_all(
    redis: Redis, key: str, page: int = 5000
) -> AsyncIterator[tuple[bytes, dict[bytes, bytes]]]:
    start = "-"
    while True:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrange(key, start, "+", count=page),
        )
        for entry in entries:
            yield entry
        if len(entries) < page:
            return
        start = "(" + entries[-1][0].decode()


async def entries_per_job(app: App) -> Counter[str]:
    """How many stream entries (history included) each job id has, over all priorities."""
    redis = await app.redis()
    counts: Counter[str] = Counter()
    for priority in app.settings.priorities:
        async for _, fields in xrange_all(redis, app.keys.stream(priority)):
            counts[fields.get(b"id", b"").decode()] += 1
    return counts


async def events(app: App, *kinds: str) -> list[dict[str, str]]:
    """Lifecycle events of the given kinds, decoded, oldest first."""
    redis = await app.redis()
    wanted = {k.encode() for k in kinds}
    out = []
    async for _, fields in xrange_all(redis, app.keys.events):
        if fields.get(b"kind") in wanted:
            out.append({k.decode(): v.decode(errors="replace") for k, v in fields.items()})
    return out


async def backlog(app: App) -> dict[str, int]:
    """Messages not yet delivered (lag), pending in a PEL, and waiting in the delayed set."""
    redis = await app.redis()
    lag = pending = 0
    for priority in app.settings.priorities:
        stream = app.keys.stream(priority)
        if not await redis.exists(stream):
            continue
        for group in await redis.xinfo_groups(stream):
            if group["name"] == GROUP.encode():
                lag += int(group["lag"] or 0)
                pending += int(group["pending"])
    delayed = int(await redis.zcard(app.keys.delayed))
    return {"lag": lag, "pending": pending, "delayed": delayed}


async def quiescent(app: App) -> bool:
    return not any((await backlog(app)).values())


async def ledger_counts(redis: Redis | str, key: str) -> Counter[str]:
    """The execution ledger: ledger key → runs (``redis`` may be a URL)."""
    if isinstance(redis, str):
        async with Redis.from_url(redis) as client:
            return await ledger_counts(client, key)
    raw = cast(dict[bytes, bytes], await redis.hgetall(key))
    return Counter({k.decode(): int(v) for k, v in raw.items()})


@dataclass
class Tally:
    """The CHAOS-PLAN outcome counts for a set of acknowledged job ids."""

    ok: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: int = 0
    unexpected: int = 0
    not_run: int = 0

    @classmethod
    def of(
        cls,
        acked: Mapping[str, str],
        final: Mapping[str, str | None],
        ledger: Mapping[str, int],
        attempted_keys: set[str],
    ) -> Tally:
        """``acked`` maps job id → ledger key; ``attempted_keys`` every key ever sent."""
        tally = cls()
        for jid, key in acked.items():
            if final.get(jid) == "succeeded" and ledger.get(key, 0) >= 1:
                tally.ok += 1
            else:
                tally.lost.append(jid)
            if ledger.get(key, 0) == 0:
                tally.not_run += 1
        tally.duplicated = sum(1 for key in acked.values() if ledger.get(key, 0) > 1)
        tally.unexpected = sum(1 for key in ledger if key not in attempted_keys)
        return tally
