"""DemoPool: the live demo's engine (``streamq.demo_pool.DemoControl``).

A pool of real worker processes (``streamq.demo_web.tasks``) on one demo
queue. A supervisor task checks them every 0.2 s: a process that froze
itself (its ``hung:<consumer>`` mark in Redis, or state ``T`` in
``/proc/<pid>/stat``) is shown ``hung``; once the visibility timeout plus a
second has passed, it is SIGKILLed and a replacement started, keeping the
pool at its size. Its job meanwhile stays pending in the group and another
worker's reclaim pass takes it once idle past the visibility timeout.

``reclaim_now`` does not wait for the timeout, and keeps every invariant:

1. it SIGKILLs every hung worker and reaps it: that process can never wake up
   and write again (fencing would refuse it anyway, invariant 3);
2. it lists the consumers that hold pending entries and belong to no live
   pool process (the killed ones, and any that died before);
3. ``handover.lua`` moves each such entry, only while the dead consumer still
   owns it, to a FRESH consumer name (XCLAIM min-idle 0 JUSTID: no delivery
   counted) and writes a ``reclaimed`` event in the same script;
4. a new worker process starts under that name. A worker drains its own
   consumer's PEL first (``XREADGROUP … 0``, which counts the delivery in
   Redis, invariant 5), so it runs those jobs at once.

Claiming to a live worker's consumer would be wrong: that worker reads its own
PEL only at start, so the jobs would sit there unheeded (and look like its
own), and a heartbeat-less entry would be reclaimed again. A reclaim pass
with min-idle 0 would be wrong too: it would take running jobs from live
workers. A live worker that reclaimed an entry first keeps it (the script
checks the owner), and a retried call changes nothing.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import anyio
from anyio.abc import Process, TaskGroup

from streamq.demo_pool import (
    KINDS,
    PRIORITIES,
    DemoConfig,
    DemoCounters,
    DemoJob,
    DemoSnapshot,
    DemoWorker,
    JobState,
)
from streamq.demo_web import counts
from streamq.demo_web.tasks import demo_app, demo_args
from streamq.envelope import delayed_fields
from streamq.errors import ConfigError
from streamq.keys import GROUP
from streamq.logging import get_logger

HANG_GRACE_S = 1.0
"""A hung worker is killed this long after the visibility timeout."""
SUPERVISE_S = 0.2
STOP_GRACE_S = 10.0
MAX_WORKERS = 16
MAX_BATCH = 10_000


@dataclass
class _Proc:
    consumer: str
    process: Process
    started: float
    stopping: bool = False
    hung_since: float | None = None


def check_config(config: DemoConfig) -> DemoConfig:
    if not isinstance(config.workers, int) or not 0 <= config.workers <= MAX_WORKERS:
        raise ConfigError(
            f"workers must be an integer from 0 to {MAX_WORKERS}, got {config.workers!r}"
        )
    if not isinstance(config.latency_ms, int) or not 0 <= config.latency_ms <= 60_000:
        raise ConfigError(
            f"latency_ms must be an integer from 0 to 60000, got {config.latency_ms!r}"
        )
    for name in ("failure_rate", "hang_rate"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be from 0 to 1, got {value!r}")
    if not 0.2 <= config.visibility_timeout_s <= 3600:
        raise ConfigError(
            f"visibility_timeout_s must be from 0.2 to 3600, got {config.visibility_timeout_s!r}"
        )
    return config


def process_state(pid: int) -> str | None:
    """The state letter in ``/proc/<pid>/stat`` ('T' when stopped), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class DemoPool:
    """The demo's worker pool and controls on one queue (by default the embedded server).

    ``await pool.start()`` ... ``await pool.stop()`` from the same task, or
    ``async with DemoPool(...) as pool``. ``python`` is the interpreter for the
    worker processes.
    """

    kinds: tuple[str, ...] = KINDS
    priorities: tuple[str, ...] = PRIORITIES

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queue: str = "streamq-demo",
        config: DemoConfig | None = None,
        prefix: str | None = None,
        python: str = sys.executable,
    ) -> None:
        self.config = check_config(config or DemoConfig())
        self.queue = queue
        self._url = redis_url
        self._prefix = prefix
        self._python = python
        self.app = demo_app(
            queue, redis_url, visibility_timeout_s=self.config.visibility_timeout_s, prefix=prefix
        )
        self._procs: list[_Proc] = []
        self._pids: dict[str, int] = {}
        self._lock = anyio.Lock()
        self._reading = anyio.Lock()  # the tally advances one read at a time
        self._tally = counts.Tally()
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._log = get_logger(queue=queue)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        stack = AsyncExitStack()
        await stack.enter_async_context(self.app)
        await self._prepare_keys()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        async with self._lock:
            await self._reconcile()
        self._tg.start_soon(self._supervise)

    async def stop(self) -> None:
        """Stop every worker (SIGTERM, SIGKILL if hung or past the grace) and reap it."""
        if self._stack is None:
            return
        stack, self._stack = self._stack, None
        if self._tg is not None:
            self._tg.cancel_scope.cancel()  # the supervisor (and this task, at its next await)
        try:
            with anyio.CancelScope(shield=True):
                async with self._lock:
                    await self._stop_all(kill=False)
        finally:
            await stack.aclose()  # leaves the task group, then closes the App's client

    async def __aenter__(self) -> DemoPool:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now (tests check none is left)."""
        return [p.process.pid for p in self._procs]

    # -- controls --------------------------------------------------------------------

    async def configure(self, config: DemoConfig) -> None:
        check_config(config)
        async with self._lock:
            restart = config.visibility_timeout_s != self.config.visibility_timeout_s
            self.config = config
            await self._write_config()
            if restart:
                # The workers read the visibility timeout at start: roll them.
                for proc in self._procs:
                    self._retire(proc)
            await self._reconcile()

    async def enqueue(self, kind: str, count: int, priority: str) -> int:
        if kind not in KINDS:
            raise ConfigError(f"unknown demo job kind {kind!r}; one of {', '.join(KINDS)}")
        if priority not in PRIORITIES:
            raise ConfigError(f"unknown priority {priority!r}; one of {', '.join(PRIORITIES)}")
        if not isinstance(count, int) or not 1 <= count <= MAX_BATCH:
            raise ConfigError(f"count must be an integer from 1 to {MAX_BATCH}, got {count!r}")
        task = self.app.tasks[kind].with_options(priority=priority)
        calls = demo_args(count, kind)
        for start in range(0, count, 500):
            await task.enqueue_many(calls[start : start + 500])
        return count

    async def reclaim_now(self) -> int:
        async with self._lock:
            redis = await self.app.redis()
            before = await self._read()
            for proc in [p for p in self._procs if self._hung(p, before.state)]:
                await self._kill(proc)
            reading = await self._read()
            live = {p.consumer for p in self._procs}
            orphans = [c for c, n in reading.consumers.items() if n > 0 and c not in live]
            if not orphans or self.config.workers == 0:
                await self._reconcile()
                return 0
            fresh = new_consumer()
            moved = 0
            scripts = await self.app.scripts()
            now_ms = reading.now_ms
            for stream in self.app.streams:
                for dead in orphans:
                    pending = await redis.xpending_range(
                        stream, GROUP, min="-", max="+", count=10_000, consumername=dead
                    )
                    if not pending:
                        continue
                    ids = [cast(bytes, p["message_id"]) for p in pending]
                    async with redis.pipeline(transaction=False) as pipe:
                        for msg_id in ids:
                            pipe.xrange(stream, min=msg_id, max=msg_id)
                        entries = await pipe.execute()
                    messages = [
                        (msg_id, (found[0][1] or {}).get(b"id", b"") if found else b"")
                        for msg_id, found in zip(ids, entries, strict=True)
                    ]
                    moved += len(
                        await scripts.handover(
                            stream=stream, events=self.app.keys.events,
                            job_prefix=self.app.keys.job(""), group=GROUP, dead=dead,
                            to=fresh, now_ms=now_ms, messages=messages,
                        )
                    )  # fmt: skip
            if moved:
                # The new worker under that name drains its own PEL first; the
                # oldest worker makes room for it if the pool is full.
                await self._spawn(fresh)
                self._trim()
                self._log.info("handed over", jobs=moved, consumers=orphans, to=fresh)
            await self._reconcile()
            return moved

    async def reset(self) -> None:
        async with self._lock:
            await self._stop_all(kill=True)
            redis = await self.app.node_redis()
            async for key in redis.scan_iter(match=self.app.keys.pattern(), count=1000):
                await redis.delete(key)
            self._tally = counts.Tally()
            await self._prepare_keys()
            await self._reconcile()

    # -- the picture ---------------------------------------------------------------

    async def snapshot(self) -> DemoSnapshot:
        reading = await self._read()
        tally = self._tally
        counters = DemoCounters(
            enqueued=tally.enqueued,
            waiting=reading.waiting,
            in_flight=reading.in_flight,
            succeeded=tally.succeeded,
            dead=reading.dead,
            retried=tally.retried,
            reclaimed=tally.reclaimed,
            hung=reading.hung,
        )
        return DemoSnapshot(
            config=self.config,
            counters=counters,
            workers=self._workers(reading),
            jobs=await self._jobs(reading),
        )

    async def _read(self) -> counts.Reading:
        async with self._reading:
            return await counts.read(await self.app.node_redis(), self.app, self._tally)

    @staticmethod
    def _hung(proc: _Proc, state: dict[str, str]) -> bool:
        """Frozen: seen so by the supervisor, marked in Redis, or stopped per /proc."""
        return (
            proc.hung_since is not None
            or f"hung:{proc.consumer}" in state
            or process_state(proc.process.pid) == "T"
        )

    def _workers(self, reading: counts.Reading) -> list[DemoWorker]:
        out: list[DemoWorker] = []
        for proc in self._procs:
            state: Any
            if self._hung(proc, reading.state):
                state = "hung"
            elif proc.stopping:
                state = "stopped"
            elif f"ready:{proc.consumer}" in reading.state:
                state = "running"
            else:
                state = "starting"
            out.append(
                DemoWorker(
                    proc.consumer, proc.process.pid, state, reading.consumers.get(proc.consumer, 0)
                )
            )
        live = {p.consumer for p in self._procs}
        for consumer, pending in reading.consumers.items():
            if pending and consumer not in live:  # gone, still holding jobs until reclaimed
                out.append(DemoWorker(consumer, self._pids.get(consumer, 0), "stopped", pending))
        return out

    async def _jobs(self, reading: counts.Reading) -> dict[JobState, list[DemoJob]]:
        """Up to 20 jobs per state: running and waiting from the streams, retrying from
        the delayed set, the rest from the events the tally saw last."""
        redis = await self.app.redis()
        app, now = self.app, reading.now_ms
        streams = app.streams
        async with redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xpending_range(stream, GROUP, min="-", max="+", count=counts.RECENT)
            for stream in streams:
                after = reading.last_delivered.get(stream)
                pipe.xrange(
                    stream, min=b"(" + after if after else "-", max="+", count=counts.RECENT
                )
            pipe.zrange(app.keys.delayed, 0, counts.RECENT - 1, withscores=True)
            replies = await pipe.execute()
        pending_lists, unread = replies[: len(streams)], replies[len(streams) : 2 * len(streams)]
        delayed = replies[-1]
        running: list[DemoJob] = []
        async with redis.pipeline(transaction=False) as pipe:
            flat = [(s, p) for s, ps in zip(streams, pending_lists, strict=True) for p in ps]
            for stream, p in flat:
                pipe.xrange(stream, min=p["message_id"], max=p["message_id"])
            bodies = await pipe.execute() if flat else []
        for (stream, p), body in zip(flat, bodies, strict=True):
            fields = body[0][1] if body else {}
            running.append(
                _job(fields, _priority(stream), "running", p["consumer"].decode(),
                     p["time_since_delivered"] / 1000)
            )  # fmt: skip
        waiting: list[DemoJob] = []
        for stream, entries in zip(streams, unread, strict=True):
            for entry_id, fields in entries:
                age = (now - int(entry_id.split(b"-")[0])) / 1000
                waiting.append(_job(fields, _priority(stream), "waiting", None, age))
        retrying = []
        for member, score in delayed:
            text = delayed_fields(member) or {}
            fields = {str(k).encode(): str(v).encode() for k, v in text.items()}
            prio = self._tally.priority_of.get(str(text.get("id", "")), "default")
            retrying.append(_job(fields, prio, "retrying", None, (score - now) / 1000))
        jobs: dict[JobState, list[DemoJob]] = {
            "running": running[: counts.RECENT],
            "waiting": waiting[: counts.RECENT],
            "retrying": retrying,
        }
        for state, kinds in (
            ("succeeded", ("succeeded",)),
            ("dead", ("failed", "dead")),
            ("reclaimed", ("reclaimed",)),
        ):  # fmt: skip
            events = sorted(
                (e for k in kinds for e in self._tally.recent.get(k, ())),
                key=lambda e: e.id, reverse=True,
            )[: counts.RECENT]  # fmt: skip
            jobs[cast(JobState, state)] = [
                DemoJob(e.job, e.task, self._tally.priority_of.get(e.job, "default"),
                        cast(JobState, state), e.attempt, e.worker, (now - e.ms) / 1000)
                for e in events
            ]  # fmt: skip
        return jobs

    # -- processes -------------------------------------------------------------------

    async def _prepare_keys(self) -> None:
        redis = await self.app.redis()
        for stream in self.app.streams:
            try:
                await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except Exception as exc:  # BUSYGROUP: a worker made it first
                if "BUSYGROUP" not in str(exc):
                    raise
        await self._write_config()

    async def _write_config(self) -> None:
        redis = await self.app.redis()
        config = self.config
        await redis.hset(
            self.app.keys.demo("config"),
            mapping={
                "latency_ms": config.latency_ms,
                "failure_rate": config.failure_rate,
                "hang_rate": config.hang_rate,
            },
        )

    async def _supervise(self) -> None:
        while True:
            await anyio.sleep(SUPERVISE_S)
            try:
                async with self._lock:
                    await self._check()
            except Exception as exc:  # a Redis hiccup: look again at the next tick
                self._log.warning("demo pool check failed", error=str(exc))

    async def _check(self) -> None:
        redis = await self.app.redis()
        names = cast(list[bytes], await redis.hkeys(self.app.keys.demo("state")))
        marks = {k.decode() for k in names if k.startswith(b"hung:")}
        now = anyio.current_time()
        for proc in list(self._procs):
            if proc.process.returncode is not None:
                await self._forget(proc)
                continue
            if proc.hung_since is None and (
                f"hung:{proc.consumer}" in marks or process_state(proc.process.pid) == "T"
            ):
                proc.hung_since = now
                self._log.warning("demo worker hung", worker=proc.consumer, pid=proc.process.pid)
            if (
                proc.hung_since is not None
                and now - proc.hung_since >= self.config.visibility_timeout_s + HANG_GRACE_S
            ):
                await self._kill(proc)
        await self._reconcile()

    async def _reconcile(self) -> None:
        """Start or retire workers until the pool has its size (hung ones count until killed)."""
        if self._stack is None:
            return
        active = [p for p in self._procs if not p.stopping]
        for _ in range(self.config.workers - len(active)):
            await self._spawn(new_consumer())
        self._trim()

    def _trim(self) -> None:
        active = [p for p in self._procs if not p.stopping]
        surplus = len(active) - self.config.workers
        # Hung ones first (they do nothing), then the oldest.
        for proc in sorted(active, key=lambda p: (p.hung_since is None, p.started))[
            : max(0, surplus)
        ]:
            self._retire(proc)

    def _retire(self, proc: _Proc) -> None:
        """Stop gracefully (SIGTERM; a frozen process only dies by SIGKILL)."""
        proc.stopping = True
        if proc.process.returncode is None:
            if proc.hung_since is not None or process_state(proc.process.pid) == "T":
                proc.process.kill()
            else:
                proc.process.terminate()

    async def _spawn(self, consumer: str) -> None:
        command = [
            self._python, "-m", "streamq.demo_web.tasks", self.queue, consumer,
            "--visibility", repr(self.config.visibility_timeout_s), "--parent", str(os.getpid()),
        ]  # fmt: skip
        if self._url:
            command += ["--url", self._url]
        if self._prefix:
            command += ["--prefix", self._prefix]
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
        )
        self._procs.append(_Proc(consumer, process, anyio.current_time()))
        self._pids[consumer] = process.pid
        if len(self._pids) > 1000:
            del self._pids[next(iter(self._pids))]

    async def _kill(self, proc: _Proc) -> None:
        proc.stopping = True
        if proc.process.returncode is None:
            proc.process.kill()
        await self._forget(proc)

    async def _forget(self, proc: _Proc) -> None:
        """Reap the exited process and drop its marks (its pending jobs stay, for reclaim)."""
        with anyio.CancelScope(shield=True):
            await proc.process.wait()
            await proc.process.aclose()
        if proc in self._procs:
            self._procs.remove(proc)
        redis = await self.app.redis()
        await redis.hdel(
            self.app.keys.demo("state"), f"ready:{proc.consumer}", f"hung:{proc.consumer}"
        )

    async def _stop_all(self, *, kill: bool) -> None:
        for proc in self._procs:
            if kill:
                proc.stopping = True
                if proc.process.returncode is None:
                    proc.process.kill()
            else:
                self._retire(proc)
        with anyio.move_on_after(STOP_GRACE_S):
            for proc in list(self._procs):
                await proc.process.wait()
        for proc in list(self._procs):
            await self._kill(proc)


def new_consumer() -> str:
    """A fresh consumer name, ``host:demo:random`` (named before its process starts)."""
    return f"{socket.gethostname()}:demo:{secrets.token_hex(4)}"


def _priority(stream: str) -> str:
    return stream.rsplit(":", 1)[1]


def _job(
    fields: dict[bytes, bytes], priority: str, state: JobState, worker: str | None, age_s: float
) -> DemoJob:
    return DemoJob(
        id=fields.get(b"id", b"").decode(),
        kind=fields.get(b"task", b"").decode(),
        priority=priority,
        state=state,
        attempt=int(fields.get(b"attempt", b"1") or 1),
        worker=worker,
        age_s=max(0.0, age_s),
    )
