"""Reclaim reaches every stale message, whatever sits ahead of it in the PEL.

``XPENDING … IDLE`` returns the PEL in id order: candidates idle past the
smallest visibility timeout, many of which may belong to tasks with longer
timeouts (not claimable yet). A scan that looks only at the first few of
them each pass never gets past such a head: a 1 s job waited behind eight
30 s jobs until those were reclaimed. The reclaim script scans a bounded
number of candidates per call and keeps a cursor across calls, so every
stale message is reached within a bounded number of passes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from streamq import App, Settings
from streamq.keys import GROUP
from tests.conftest import assert_no_key_leak, queue_name, running_worker

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


async def test_a_short_timeout_job_behind_long_timeout_ones_is_reclaimed_in_time(
    fast_app: App,
) -> None:
    """Eight 30 s jobs of a dead consumer head the PEL; a 1 s job sits behind them.

    A worker with two free slots reclaims the 1 s job within its timeout
    plus a few janitor intervals. Before, each pass looked at the first
    2 x 4 idle candidates only (the eight 30 s jobs, not yet due), so the
    1 s job waited until they were reclaimed, 30 s later.
    """

    @fast_app.task(name="long", visibility_timeout=30)
    async def long() -> None: ...

    @fast_app.task(name="short", visibility_timeout=1)
    async def short() -> str:
        return "reclaimed"

    for _ in range(8):
        await long.enqueue()
    job = await short.enqueue()
    assert len(await deliver_to(fast_app, "dead", 9)) == 9
    delivered = time.monotonic()
    async with running_worker(fast_app, concurrency=2):
        assert await job.result(timeout=1 + 3.0) == "reclaimed"
    assert time.monotonic() - delivered < 1 + 3.0
    redis = await fast_app.redis()
    pending = await redis.xpending_range(fast_app.keys.stream("default"), GROUP, "-", "+", 20)
    assert [p["consumer"] for p in pending] == [b"dead"] * 8


async def test_the_scan_continues_from_a_cursor_across_calls(fast_app: App) -> None:
    """300 not-yet-due candidates ahead of one stale entry; 50 examined per call.

    The stale entry is reached by the 7th call at the latest, and a further
    call starts over from the head of the PEL (the cursor wraps around).
    """

    @fast_app.task(name="long", visibility_timeout=600)
    async def long() -> None: ...

    @fast_app.task(name="short", visibility_timeout=1)
    async def short() -> None: ...

    await long.enqueue_many([() for _ in range(300)])
    job = await short.enqueue()
    await deliver_to(fast_app, "dead", 301)
    redis = await fast_app.redis()
    stream = fast_app.keys.stream("default")
    (last,) = await redis.xrevrange(stream, count=1)
    await redis.xclaim(stream, GROUP, "dead", 0, [last[0]], idle=5_000, justid=True)
    scripts = await fast_app.scripts()
    calls = 0
    got: list[Any] = []
    while not got:
        calls += 1
        assert calls <= 7, "the stale entry was not reached"
        got = await scripts.reclaim(
            stream=stream, dlq=fast_app.keys.dlq, events=fast_app.keys.events,
            job_prefix=fast_app.keys.job(""), group=GROUP,
            consumer="c2", count=1, min_idle_ms=0, now_ms=int(time.time() * 1000),
            default_visibility_ms=600_000,
            visibility_ms={"long": 600_000, "short": 1000}, scan=50,
        )  # fmt: skip
    assert [m for m, _, _, _ in got] == [last[0]]
    assert got[0][1][b"id"] == job.id.encode()
    await redis.xack(stream, GROUP, last[0])
    await redis.delete(fast_app.keys.job(job.id))
