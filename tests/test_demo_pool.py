"""The live demo's engine: real worker processes, real hangs, counters that always balance."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import pytest

from streamq.app import App
from streamq.demo_pool import DemoConfig, DemoControl, DemoPool, DemoSnapshot
from streamq.demo_web.pool import process_state
from streamq.errors import ConfigError
from streamq.keys import GROUP
from tests.conftest import queue_name

pytestmark = pytest.mark.anyio

QUIET = DemoConfig(
    workers=2, latency_ms=10, failure_rate=0.0, hang_rate=0.0, visibility_timeout_s=1.0
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Balance:
    """Snapshots taken in a loop in the background; every one must balance."""

    def __init__(self, pool: DemoPool) -> None:
        self.pool = pool
        self.taken = 0
        self.unbalanced: list[DemoSnapshot] = []
        self.last: DemoSnapshot | None = None

    async def run(self) -> None:
        while True:
            snap = await self.pool.snapshot()
            self.taken += 1
            self.last = snap
            if not snap.counters.balanced:
                self.unbalanced.append(snap)
            await anyio.sleep(0.01)


@asynccontextmanager
async def demo(
    redis_url: str, config: DemoConfig = QUIET
) -> AsyncIterator[tuple[DemoPool, Balance]]:
    pool = DemoPool(redis_url, queue=queue_name(), config=config)
    seen: set[int] = set()
    try:
        async with pool:
            balance = Balance(pool)
            async with anyio.create_task_group() as tg:
                tg.start_soon(balance.run)
                try:
                    yield pool, balance
                finally:
                    seen.update(pool.pids)
                    tg.cancel_scope.cancel()
            assert balance.taken > 0
            assert not balance.unbalanced, balance.unbalanced[0].counters
            await pool.reset()
    finally:
        seen.update(pool.pids)
        for pid in seen:  # even on failure, no child survives the test
            if alive(pid):
                os.kill(pid, 9)
    assert pool.pids == []
    assert not [pid for pid in seen if alive(pid)]


async def until(
    pool: DemoPool, check: Callable[[DemoSnapshot], bool], timeout: float = 15.0
) -> DemoSnapshot:
    with anyio.fail_after(timeout):
        while True:
            snap = await pool.snapshot()
            if check(snap):
                return snap
            await anyio.sleep(0.05)


async def test_pool_runs_a_batch_and_stop_leaves_no_process(redis_url: str) -> None:
    async with demo(redis_url) as (pool, balance):
        control: DemoControl = pool  # the dashboard's view of it
        snap = await until(pool, lambda s: [w.state for w in s.workers] == ["running"] * 2)
        pids = [w.pid for w in snap.workers]
        assert all(alive(pid) for pid in pids)
        assert await control.enqueue("email", 10, "high") == 10
        assert await control.enqueue("invoice", 10, "low") == 10
        snap = await until(pool, lambda s: s.counters.succeeded == 20)
        c = snap.counters
        assert (c.enqueued, c.waiting, c.in_flight, c.dead, c.retried, c.hung) == (
            20,
            0,
            0,
            0,
            0,
            0,
        )
        assert len(snap.jobs["succeeded"]) == 20
        assert {j.kind for j in snap.jobs["succeeded"]} == {"email", "invoice"}
        assert balance.taken > 1
    assert not [pid for pid in pids if alive(pid)]


async def test_failures_are_retried_then_dead(redis_url: str) -> None:
    async with demo(redis_url) as (pool, _balance):
        await pool.configure(replace(QUIET, failure_rate=1.0))
        await pool.enqueue("webhook", 3, "default")
        snap = await until(pool, lambda s: s.counters.dead == 3)
        assert snap.counters.retried == 9  # max_retries 3 per job
        assert snap.counters.succeeded == 0
        assert len(snap.jobs["dead"]) == 3
        await pool.configure(QUIET)
        await pool.enqueue("webhook", 3, "default")
        snap = await until(pool, lambda s: s.counters.succeeded == 3)
        assert snap.counters.enqueued == 6


async def test_a_hung_worker_is_frozen_its_job_reclaimed_and_it_is_replaced(redis_url: str) -> None:
    async with demo(redis_url) as (pool, _balance):
        await until(pool, lambda s: [w.state for w in s.workers] == ["running"] * 2)
        await pool.configure(replace(QUIET, hang_rate=1.0))
        await pool.enqueue("thumbnail", 1, "high")
        # Counters come from Redis and worker states from the processes, read one after
        # the other: wait until both show the hang.
        snap = await until(
            pool, lambda s: any(w.state == "hung" for w in s.workers) and s.counters.hung == 1
        )
        (hung,) = [w for w in snap.workers if w.state == "hung"]
        assert process_state(hung.pid) == "T"  # really frozen
        assert hung.in_flight == 1 and snap.counters.in_flight == 1 and snap.counters.hung == 1
        assert snap.jobs["running"][0].worker == hung.name
        await pool.configure(QUIET)  # the reclaimed attempt must not hang again
        snap = await until(pool, lambda s: s.counters.succeeded == 1)
        assert snap.counters.reclaimed >= 1
        (reclaimed,) = snap.jobs["reclaimed"][:1]
        assert reclaimed.kind == "thumbnail"
        # Killed after the visibility timeout and replaced: the pool keeps its size.
        snap = await until(
            pool, lambda s: [w.state for w in s.workers] == ["running"] * 2 and not alive(hung.pid)
        )
        assert hung.pid not in [w.pid for w in snap.workers]


async def test_reclaim_now_hands_a_hung_job_over_before_the_timeout(redis_url: str) -> None:
    slow = replace(QUIET, workers=1, visibility_timeout_s=60.0)
    async with demo(redis_url, slow) as (pool, _balance):
        await pool.configure(replace(slow, hang_rate=1.0))
        await pool.enqueue("invoice", 1, "default")
        snap = await until(pool, lambda s: any(w.state == "hung" for w in s.workers))
        (hung,) = snap.workers
        await pool.configure(replace(slow, hang_rate=0.0))
        assert await pool.reclaim_now() == 1
        assert not alive(hung.pid)
        snap = await until(pool, lambda s: s.counters.succeeded == 1, timeout=10)
        assert snap.counters.reclaimed == 1
        assert snap.jobs["reclaimed"][0].worker != hung.name
        assert await pool.reclaim_now() == 0  # nothing left to hand over


async def test_bad_controls_are_refused(redis_url: str) -> None:
    with pytest.raises(ConfigError):
        DemoPool(redis_url, config=DemoConfig(workers=99))
    pool = DemoPool(redis_url, queue=queue_name(), config=replace(QUIET, workers=0))
    async with pool:
        with pytest.raises(ConfigError):
            await pool.enqueue("fax", 1, "high")
        with pytest.raises(ConfigError):
            await pool.enqueue("email", 1, "urgent")
        with pytest.raises(ConfigError):
            await pool.configure(replace(QUIET, failure_rate=1.5))
        await pool.reset()


async def test_resizing_starts_and_stops_processes(redis_url: str) -> None:
    async with demo(redis_url, replace(QUIET, workers=1)) as (pool, _balance):
        await pool.configure(replace(QUIET, workers=3))
        snap = await until(pool, lambda s: [w.state for w in s.workers] == ["running"] * 3)
        first = [w.pid for w in snap.workers]
        await pool.configure(replace(QUIET, workers=1))
        await until(pool, lambda s: len(s.workers) == 1)
        assert sum(alive(pid) for pid in first) == 1  # SIGTERM: two stopped and were reaped


async def test_flow_with_failures_and_hangs_stays_balanced(redis_url: str) -> None:
    """Every snapshot balances while jobs fail, retry, hang and get reclaimed."""
    busy = DemoConfig(
        workers=3, latency_ms=5, failure_rate=0.3, hang_rate=0.05, visibility_timeout_s=0.5
    )
    async with demo(redis_url, busy) as (pool, balance):
        for kind in pool.kinds:
            await pool.enqueue(kind, 10, "default")

        def done(s: DemoSnapshot) -> bool:
            c = s.counters
            return c.succeeded + c.dead == 40 and not c.waiting and not c.in_flight

        snap = await until(pool, done, timeout=25)
        assert snap.counters.retried > 0
        assert balance.taken > 20


async def test_handover_moves_only_what_the_dead_consumer_still_owns(app: App) -> None:
    """reclaim_now's script: a live worker that reclaimed the entry first keeps it."""

    @app.task(name="noop")
    async def noop() -> None: ...

    await noop.enqueue()
    await noop.enqueue()
    redis = await app.redis()
    stream = app.keys.stream(app.settings.priorities[1])
    got = await redis.xreadgroup(GROUP, "dead", {stream: ">"}, count=2)
    (first, f1), (second, f2) = got[0][1]
    await redis.xclaim(stream, GROUP, "live", 0, [second], justid=True)  # reclaimed meanwhile
    scripts = await app.scripts()

    async def handover() -> list[bytes]:
        return await scripts.handover(
            stream=stream, events=app.keys.events, job_prefix=app.keys.job(""), group=GROUP,
            dead="dead", to="fresh", now_ms=0, messages=[(first, f1[b"id"]), (second, f2[b"id"])],
        )  # fmt: skip

    assert await handover() == [first]
    assert await handover() == []  # a retried call changes nothing
    owners = {
        p["message_id"]: p["consumer"]
        for p in await redis.xpending_range(stream, GROUP, "-", "+", 10)
    }
    assert owners == {first: b"fresh", second: b"live"}
    assert [
        p["times_delivered"] for p in await redis.xpending_range(stream, GROUP, first, first, 1)
    ] == [1]
    events = await redis.xrange(app.keys.events)
    reclaimed = [f for _, f in events if f[b"kind"] == b"reclaimed"]
    assert [(f[b"from"], f[b"worker"], f[b"job"]) for f in reclaimed] == [
        (b"dead", b"fresh", f1[b"id"])
    ]
    job_hash = await redis.hgetall(app.keys.job(f1[b"id"].decode()))
    assert b"reclaimed" in job_hash.values()
