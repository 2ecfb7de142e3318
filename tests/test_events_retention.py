"""The events stream is history like the priority streams: kept by time, not by count.

It used to be capped near ``events_maxlen`` (100,000 entries) by every
script's ``XADD MAXLEN ~``: a job writes about three events, so after
100,000 jobs only the last ~33,000 jobs' events were left, whatever
``retention_s`` promised. Now no script caps it; the janitor trims it by
``retention_s`` and, only where the user sets one, by ``events_maxlen``, and
never the last ``EVENTS_KEEP_S`` seconds (what a result waiter reading now
still needs).
"""

from __future__ import annotations

from typing import cast

import pytest
from redis.asyncio import Redis

from streamq import App, ConfigError, Settings, Worker
from streamq.janitor import EVENTS_KEEP_S, Janitor
from tests.conftest import drop_queue, queue_name

pytestmark = pytest.mark.anyio


async def make_app(redis_url: str, settings: Settings) -> App:
    app = App(queue_name(), redis_url=redis_url, settings=settings)

    @app.task(name="noop")
    async def noop(n: int) -> int:
        return n

    return app


async def server_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def fill(redis: Redis, key: str, count: int, *, at_ms: int | None = None) -> None:
    """``count`` events; at ``at_ms`` (explicit ids, in the past) or now (``*``)."""
    for start in range(0, count, 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for seq in range(start, min(count, start + 5000)):
                entry_id = "*" if at_ms is None else f"{at_ms}-{seq}"
                pipe.xadd(key, {"kind": "filler", "job": ""}, id=entry_id)
            await pipe.execute()


def test_events_maxlen_is_none_by_default_and_explicit_when_set() -> None:
    assert Settings().events_maxlen is None
    assert Settings(events_maxlen=5_000).events_maxlen == 5_000
    for bad in (0, -1, 2.5, "100"):
        with pytest.raises(ConfigError):
            Settings(events_maxlen=bad)  # type: ignore[arg-type]


async def test_no_script_caps_the_events_stream(redis_url: str) -> None:
    """With the defaults, 100,200 events and then a job's: the oldest event stays.

    Before, the job's enqueue, start and success each ran ``XADD MAXLEN ~ 100000``
    and dropped the oldest node of the stream.
    """
    app = await make_app(redis_url, Settings())
    async with app:
        redis = await app.redis()
        await fill(redis, app.keys.events, 100_200)
        (first_id, _), *_ = await redis.xrange(app.keys.events, count=1)
        job = await app.tasks["noop"].enqueue(7)
        await Worker(app, burst=True).run()
        assert await job.result(timeout=10) == 7
        await Janitor(app, "janitor").trim()  # the default retention keeps 7 days
        (still_first, _), *_ = await redis.xrange(app.keys.events, count=1)
        assert still_first == first_id
        kinds = [f[b"kind"] for _, f in await redis.xrevrange(app.keys.events, count=3)]
        assert kinds == [b"succeeded", b"started", b"enqueued"]
        assert await redis.xlen(app.keys.events) == 100_203
        await drop_queue(app)


async def test_events_maxlen_is_a_cap_the_janitor_applies(redis_url: str) -> None:
    """``events_maxlen`` caps the events stream (approximately) at the janitor's trim;
    the priority streams keep following ``retention_maxlen`` (None here: untouched)."""
    app = await make_app(redis_url, Settings(retention_s=None, events_maxlen=500))
    async with app:
        redis = await app.redis()
        an_hour_ago = await server_ms(redis) - 3_600_000
        await fill(redis, app.keys.events, 3_000, at_ms=an_hour_ago)
        await app.tasks["noop"].enqueue_many([(i,) for i in range(300)])
        await Worker(app, burst=True, concurrency=50).run()
        await Janitor(app, "janitor").trim()  # (the worker's own janitor may have trimmed)
        assert 500 <= await redis.xlen(app.keys.events) < 3_000
        assert await redis.xlen(app.keys.stream("default")) == 300
        await drop_queue(app)


async def test_events_maxlen_none_means_no_count_limit(redis_url: str) -> None:
    app = await make_app(redis_url, Settings(retention_s=None, retention_maxlen=100))
    async with app:
        redis = await app.redis()
        await fill(redis, app.keys.events, 3_000, at_ms=await server_ms(redis) - 3_600_000)
        await app.tasks["noop"].enqueue_many([(i,) for i in range(300)])
        await Worker(app, burst=True, concurrency=50).run()
        await Janitor(app, "janitor").trim()
        assert await redis.xlen(app.keys.events) == 3_000 + 3 * 300
        assert await redis.xlen(app.keys.stream("default")) < 300  # retention_maxlen: streams
        await drop_queue(app)


async def test_events_are_trimmed_by_age(redis_url: str) -> None:
    app = await make_app(redis_url, Settings(retention_s=3_600))
    async with app:
        redis = await app.redis()
        now = await server_ms(redis)
        await fill(redis, app.keys.events, 2_000, at_ms=now - 2 * 3_600_000)
        await fill(redis, app.keys.events, 700, at_ms=now - 1_800_000)
        await Janitor(app, "janitor").trim()
        assert await redis.xlen(app.keys.events) == 700
        (first_id, _), *_ = await redis.xrange(app.keys.events, count=1)
        assert first_id == f"{now - 1_800_000}-0".encode()
        await drop_queue(app)


async def test_trimming_never_cuts_what_a_waiter_reading_now_needs(redis_url: str) -> None:
    """With ``retention_s=0`` (and a count cap of 1) the trim still keeps the last
    ``EVENTS_KEEP_S`` seconds: a ``job.result()`` waiter reads the stream from the
    last id it saw when it read the job hash, a moment ago. Before, a trim at that
    moment removed the events it was about to read (the waiter then only learned
    of its job at its next periodic re-check)."""
    app = await make_app(redis_url, Settings(retention_s=0, events_maxlen=1))
    async with app:
        redis = await app.redis()
        old = await server_ms(redis) - int(EVENTS_KEEP_S * 1000) - 60_000
        await fill(redis, app.keys.events, 1_000, at_ms=old)
        await fill(redis, app.keys.events, 5)  # a waiter's cursor: the last of these
        (cursor, _), *_ = await redis.xrevrange(app.keys.events, count=1)
        job = await app.tasks["noop"].enqueue(1)
        await Worker(app, burst=True).run()
        await Janitor(app, "janitor").trim()
        after = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrange(app.keys.events, min=b"(" + cursor),
        )
        assert [f[b"kind"] for _, f in after] == [b"enqueued", b"started", b"succeeded"]
        assert all(f[b"job"] == job.id.encode() for _, f in after)
        assert await redis.xlen(app.keys.events) == 5 + 3  # the old ones are gone
        await drop_queue(app)
