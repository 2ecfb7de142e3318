"""Backpressure: enqueue refuses with QueueFull instead of growing without bound."""

from __future__ import annotations

import pytest

from streamq import App, EnqueueError, QueueFull, Settings
from streamq.worker.fetch import Fetcher
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio


async def test_queue_full_counts_waiting_pending_and_delayed_jobs(redis_url: str) -> None:
    app = App(queue_name(), redis_url=redis_url, settings=Settings(max_pending=5))

    @app.task(name="t")
    async def t() -> None: ...

    async with app:
        await t.enqueue()
        await t.with_options(priority="high").enqueue()
        await t.enqueue_in(3600)
        redis = await app.redis()
        taken = Fetcher(redis, await app.scripts(), app.keys, app.settings, "c", 100)
        assert len(await taken.fetch(1)) == 1  # delivered, not acked: still counts
        await t.enqueue()
        await t.enqueue()
        with pytest.raises(QueueFull) as info:
            await t.enqueue()
        assert isinstance(info.value, EnqueueError)
        assert (info.value.depth, info.value.limit) == (5, 5)
        stream_lengths = [await redis.xlen(app.keys.stream(p)) for p in ("high", "default")]
        assert stream_lengths == [1, 3]  # the refused job wrote nothing
        await drop_queue(app)


async def test_enqueue_many_reports_what_it_accepted(redis_url: str) -> None:
    app = App(queue_name(), redis_url=redis_url, settings=Settings(max_pending=3))

    @app.task(name="t")
    async def t(n: int) -> int:
        return n

    async with app:
        with pytest.raises(QueueFull) as info:
            await t.enqueue_many([(i,) for i in range(5)])
        accepted = info.value.accepted
        assert len(accepted) == 3
        async with running_worker(app):
            assert [await j.result(timeout=10) for j in accepted] == [0, 1, 2]
            # Once drained there is room again.
            assert await (await t.enqueue(9)).result(timeout=10) == 9
        await drop_queue(app)


async def test_a_bulk_enqueue_straddling_the_limit_accepts_exactly_up_to_it(
    redis_url: str,
) -> None:
    """The limit holds across the several script calls of one large enqueue_many."""
    from streamq.app import ENQUEUE_BATCH

    limit = ENQUEUE_BATCH + ENQUEUE_BATCH // 2
    app = App(queue_name(), redis_url=redis_url, settings=Settings(max_pending=limit))

    @app.task(name="t")
    async def t(n: int) -> None: ...

    async with app:
        with pytest.raises(QueueFull) as info:
            await t.enqueue_many([(i,) for i in range(ENQUEUE_BATCH * 3)])
        assert len(info.value.accepted) == limit
        assert info.value.depth == limit
        redis = await app.redis()
        assert await redis.xlen(app.keys.stream("default")) == limit
        await drop_queue(app)
