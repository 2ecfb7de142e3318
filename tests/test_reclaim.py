"""Reclaim scales: one scan per stream and interval, whatever the number of workers.

Every worker used to scan every stream's whole PEL every janitor interval,
so the server's reclaim cost grew with workers x PEL size, and a scan that
looked at a bounded number of candidates per call left a short-timeout job
waiting behind many long-timeout ones for many intervals. Now one scanner per
stream and interval (a gate in Redis) walks the whole PEL in bounded pages and
hands stale messages out; every worker takes from the hand-out and claims
with the task's own timeout (``streamq.worker.reclaim``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import pytest

from streamq import App, Settings
from streamq.keys import GROUP
from streamq.worker.fetch import Fetcher
from streamq.worker.reclaim import LOOKUPS, MIN_LEASE_MS, Reclaimer
from tests.conftest import assert_no_key_leak, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio

INTERVAL_S = 0.2


@pytest.fixture
async def fast_app(redis_url: str) -> AsyncIterator[App]:
    application = App(
        queue_name(), redis_url=redis_url, settings=Settings(janitor_interval_s=INTERVAL_S)
    )
    async with application:
        yield application
        await assert_no_key_leak(application)


async def deliver_to(app: App, consumer: str, count: int) -> list[bytes]:
    redis = await app.redis()
    reply = cast(
        list[tuple[bytes, list[tuple[bytes, Any]]]],
        await redis.xreadgroup(GROUP, consumer, {app.keys.stream("default"): ">"}, count=count),
    )
    return [msg_id for msg_id, _ in reply[0][1]]


async def age(app: App, ids: list[bytes], idle_ms: int, consumer: str = "dead") -> None:
    """Make pending entries look idle for ``idle_ms`` (XCLAIM … IDLE, no delivery counted)."""
    redis = await app.redis()
    stream = app.keys.stream("default")
    for i in range(0, len(ids), 1000):
        await redis.xclaim(stream, GROUP, consumer, 0, ids[i : i + 1000], idle=idle_ms, justid=True)


async def make_fetcher(app: App, consumer: str, visibility_ms: dict[str, int]) -> Fetcher:
    f = Fetcher(
        await app.redis(), await app.scripts(), app.keys, app.settings, consumer, 100,
        visibility_ms,
    )  # fmt: skip
    await f.ensure_groups()
    return f


async def test_a_short_timeout_job_behind_many_long_timeout_ones_is_reclaimed_in_time(
    fast_app: App,
) -> None:
    """3,000 entries of a 600 s task, idle past the 1 s one's timeout, head the PEL.

    The 1 s job behind them is reclaimed and run within its timeout plus
    about one janitor interval. Before, each pass examined at most 100 such
    candidates from a cursor, so it took 30 intervals to get past them.
    """

    @fast_app.task(name="long", visibility_timeout=600)
    async def long() -> None: ...

    @fast_app.task(name="short", visibility_timeout=1)
    async def short() -> str:
        return "reclaimed"

    for start in range(0, 3000, 1000):
        await long.enqueue_many([() for _ in range(start, start + 1000)])
    job = await short.enqueue()
    ids = await deliver_to(fast_app, "dead", 3001)
    await age(fast_app, ids[:-1], 5_000)
    delivered = time.monotonic()
    async with running_worker(fast_app, concurrency=2):
        assert await job.result(timeout=1 + 3.0) == "reclaimed"
    took = time.monotonic() - delivered
    assert took < 1 + INTERVAL_S + 1.0, took
    redis = await fast_app.redis()
    stream = fast_app.keys.stream("default")
    assert (await redis.xpending(stream, GROUP))["pending"] == 3000
    await redis.xack(stream, GROUP, *ids[:-1])
    await redis.delete(*(fast_app.keys.job(f) for f in await job_ids(fast_app, ids[:-1])))


async def job_ids(app: App, ids: list[bytes]) -> list[str]:
    redis = await app.redis()
    stream = app.keys.stream("default")
    async with redis.pipeline(transaction=False) as pipe:
        for msg_id in ids:
            pipe.xrange(stream, min=msg_id, max=msg_id)
        found = await pipe.execute()
    return [entry[0][1][b"id"].decode() for entry in found]


async def xpending_calls(app: App) -> int:
    redis = await app.node_redis()
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xpending", {}).get("calls", 0))


async def test_five_workers_scan_each_stream_about_once_per_interval(fast_app: App) -> None:
    """Five reclaim loops on their own consumers, each every interval, for 8 intervals.

    Nothing is stale: every scan page is two XPENDING calls (the PEL's size,
    then the page), counted by the server. One pass per stream and interval
    (three streams) is 24 pages; five workers scanning each time would be 120.
    """

    @fast_app.task(name="t")
    async def t() -> None: ...

    await t.enqueue_many([() for _ in range(50)])
    await deliver_to(fast_app, "alive", 50)
    workers = [await make_fetcher(fast_app, f"w{i}", {}) for i in range(5)]
    intervals = 8
    before = await xpending_calls(fast_app)

    async def loop(f: Fetcher, offset: float) -> None:
        await anyio.sleep(offset)
        for _ in range(intervals):
            assert await f.reclaim(10) == []
            await anyio.sleep(INTERVAL_S)

    async with anyio.create_task_group() as tg:
        for i, f in enumerate(workers):
            tg.start_soon(loop, f, i * INTERVAL_S / 5)
    pages = (await xpending_calls(fast_app) - before) / 2  # the PEL's size, then a page
    streams = len(fast_app.settings.priorities)
    passes = sum(f.reclaimer.passes for f in workers)
    assert pages == sum(f.reclaimer.pages for f in workers)
    assert streams * (intervals - 2) <= pages <= streams * (intervals + 3), pages
    assert passes == pages  # one page per pass: the PEL is small
    redis = await fast_app.redis()
    held = await pending_ids(fast_app)
    await redis.xack(fast_app.keys.stream("default"), GROUP, *held)
    await redis.delete(*(fast_app.keys.job(j) for j in await job_ids(fast_app, held)))


async def pending_ids(app: App) -> list[bytes]:
    redis = await app.redis()
    rows = await redis.xpending_range(app.keys.stream("default"), GROUP, "-", "+", 10_000)
    return [cast(bytes, r["message_id"]) for r in rows]


async def test_a_dead_scanners_gate_expires(fast_app: App) -> None:
    """A scanner stopped mid-pass holds its stream's gate for the lease only."""

    @fast_app.task(name="long", visibility_timeout=600)
    async def long() -> None: ...

    await long.enqueue_many([() for _ in range(LOOKUPS + 50)])
    ids = await deliver_to(fast_app, "dead", LOOKUPS + 50)
    await age(fast_app, ids, 5_000)  # candidates: the first page stops after LOOKUPS reads
    vis = {"long": 600_000, "short": 1000}
    scanner = await make_fetcher(fast_app, "scanner", vis)
    scripts = await fast_app.scripts()
    keys = scanner.reclaimer.script_keys("default")
    head = [GROUP, "scanner", 0, 1000, 300_000, int(INTERVAL_S * 1000), MIN_LEASE_MS, 1000,
            LOOKUPS, 2, "long", 600_000, "short", 1000]  # fmt: skip
    state, _ = await scripts.reclaim_page(keys, head)
    assert state == "more"  # ... and the scanner dies here
    redis = await fast_app.redis()
    gate = fast_app.keys.reclaim_gate("default")
    assert await redis.hget(gate, "owner") == b"scanner"
    assert 0 < await redis.pttl(gate) <= MIN_LEASE_MS
    other = await make_fetcher(fast_app, "other", vis)
    began = time.monotonic()
    assert await other.reclaim(5) == []
    assert await redis.hget(gate, "owner") == b"scanner"  # the gate holds

    async def other_scanned() -> bool:
        await other.reclaim(5)
        return await redis.hget(gate, "owner") == b""  # its pass done: the stamp

    await wait_until(other_scanned, 5, "another worker to scan once the lease expired")
    assert time.monotonic() - began < MIN_LEASE_MS / 1000 + 1.0
    await redis.xack(fast_app.keys.stream("default"), GROUP, *ids)
    await redis.delete(*(fast_app.keys.job(j) for j in await job_ids(fast_app, ids)))


async def test_handed_out_messages_acked_or_heartbeated_since_are_skipped(fast_app: App) -> None:
    """A paged scan hands out three stale messages among 22 fresh ones; before they
    are taken, one is acked and one heartbeated (XCLAIM JUSTID by its owner): only
    the third is claimed, with its delivery counted and its reclaim indexed."""

    @fast_app.task(name="short", visibility_timeout=1)
    async def short() -> None: ...

    jobs = [await short.enqueue() for _ in range(25)]
    ids = await deliver_to(fast_app, "stalled", 3)
    fresh = await deliver_to(fast_app, "alive", 22)
    await age(fast_app, ids, 5_000, "stalled")
    vis = {"short": 1000}
    # Scan only (no free slot), in pages of 2 entries: a PEL of 25 (over 10 pages)
    # is walked with plain XPENDING pages, 13 calls.
    paged = Reclaimer(await fast_app.scripts(), fast_app.keys, fast_app.settings, "scanner",
                      300_000, vis, page=2)  # fmt: skip
    assert await paged.reclaim("default", 0) == []
    assert (paged.pages, paged.passes) == (13, 1)
    redis = await fast_app.redis()
    handout = fast_app.keys.handout("default")
    assert await redis.zcard(handout) == 3
    assert 0 < await redis.pttl(handout) <= 3 * INTERVAL_S * 1000
    stream = fast_app.keys.stream("default")
    await redis.xack(stream, GROUP, ids[0])
    await redis.xclaim(stream, GROUP, "stalled", 0, [ids[1]], justid=True)  # a heartbeat
    taker = await make_fetcher(fast_app, "taker", vis)
    got = await taker.reclaim(10)
    assert [m.msg_id for m in got] == [ids[2]]
    assert got[0].deliveries == 2  # from Redis: the claim counted a delivery
    assert await redis.zcard(handout) == 0
    owners = {
        cast(bytes, p["message_id"]): p["consumer"]
        for p in await redis.xpending_range(stream, GROUP, "-", "+", 10)
    }
    assert owners[ids[1]] == b"stalled" and owners[ids[2]] == b"taker"
    assert ids[0] not in owners
    index = await redis.hgetall(fast_app.keys.job(jobs[2].id))
    assert b"reclaimed" in index.values()
    assert b"reclaimed" not in (await redis.hgetall(fast_app.keys.job(jobs[1].id))).values()
    await redis.xack(stream, GROUP, ids[1], ids[2], *fresh)
    await redis.delete(*(fast_app.keys.job(j.id) for j in jobs))


async def test_a_fresh_pel_is_walked_again_only_when_an_entry_can_be_stale(fast_app: App) -> None:
    """25 fresh entries of a 1 s task, walked in plain pages: the pass notes that
    nothing can be stale for about a second, so calls meanwhile do not scan
    again; then the entries (their consumer gone) are reclaimed within their
    timeout plus about one interval."""

    @fast_app.task(name="short", visibility_timeout=1)
    async def short() -> None: ...

    jobs = [await short.enqueue() for _ in range(25)]
    ids = await deliver_to(fast_app, "gone", 25)
    delivered = time.monotonic()
    reclaimer = Reclaimer(await fast_app.scripts(), fast_app.keys, fast_app.settings, "r",
                          300_000, {"short": 1000}, page=2)  # fmt: skip
    assert await reclaimer.reclaim("default", 25) == []
    assert reclaimer.passes == 1
    redis = await fast_app.redis()
    assert await redis.pttl(fast_app.keys.reclaim_gate("default")) > 2 * INTERVAL_S * 1000
    got: list[tuple[bytes, Any, int, bytes]] = []

    async def reclaimed() -> bool:
        got.extend(await reclaimer.reclaim("default", 25))
        return len(got) == 25

    while time.monotonic() - delivered < 0.6:  # calls each interval: the stamp holds
        assert await reclaimer.reclaim("default", 25) == []
        await anyio.sleep(INTERVAL_S)
    assert reclaimer.passes == 1
    await wait_until(reclaimed, 5, "the entries to be reclaimed once stale")
    assert time.monotonic() - delivered < 1 + 2 * INTERVAL_S + 0.5
    assert sorted(m for m, _, _, _ in got) == sorted(ids)
    await redis.xack(fast_app.keys.stream("default"), GROUP, *ids)
    await redis.delete(*(fast_app.keys.job(j.id) for j in jobs))
