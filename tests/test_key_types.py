"""A key of the queue holding the wrong Redis type gives an error that names it.

Redis's WRONGTYPE names neither the key nor the type wanted; streamq finds
the key (TYPE of the keys the call touched) and raises WrongKeyType, at
enqueue and in the worker's log, and ``streamq doctor`` lists every key of
the queue whose type is not the one streamq keeps there.
"""

from __future__ import annotations

import anyio
import pytest
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from streamq import App, Worker, WrongKeyType
from tests.conftest import running_worker, wait_until

pytestmark = pytest.mark.anyio


async def test_enqueue_names_a_stream_that_is_a_string(app: App) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    redis = await app.redis()
    stream = app.keys.stream("default")
    await redis.set(stream, "oops")
    try:
        with pytest.raises(WrongKeyType) as caught:
            await t.enqueue()
        assert caught.value.key == stream
        assert (caught.value.expected, caught.value.actual) == ("stream", "string")
        assert stream in str(caught.value) and "stream" in repr(caught.value)
        assert isinstance(caught.value, ResponseError)  # still a Redis error
        with pytest.raises(WrongKeyType):  # the batched path (several script calls)
            await t.enqueue_many([()] * 250)
    finally:
        await redis.delete(stream)


async def test_enqueue_in_names_a_delayed_set_that_is_a_list(app: App) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    redis = await app.redis()
    await redis.rpush(app.keys.delayed, "oops")
    try:
        with pytest.raises(WrongKeyType) as caught:
            await t.enqueue_in(60)
        assert caught.value.key == app.keys.delayed
        assert (caught.value.expected, caught.value.actual) == ("zset", "list")
    finally:
        await redis.delete(app.keys.delayed)


async def test_a_worker_cannot_start_on_a_stream_that_is_a_string(app: App) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    redis = await app.redis()
    stream = app.keys.stream("low")
    await redis.set(stream, "oops")
    try:
        with pytest.raises(WrongKeyType) as caught, anyio.fail_after(10):
            await Worker(app).run()
        assert caught.value.key == stream
    finally:
        await redis.delete(stream)


async def test_a_running_worker_logs_which_key_has_the_wrong_type(app: App) -> None:
    """A stream replaced by a string under a running worker: its log names the key."""

    @app.task(name="t")
    async def t() -> int:
        return 1

    redis = await app.redis()
    stream = app.keys.stream("default")
    with capture_logs() as logs:
        async with running_worker(app, block_ms=200):
            assert await (await t.enqueue()).result(timeout=10) == 1
            await redis.delete(stream)
            await redis.set(stream, "oops")

            def logged() -> bool:
                return any(
                    e["event"] == "fetch failed; retrying" and stream in str(e.get("error"))
                    for e in logs
                )

            try:
                await wait_until(logged, 10, "the fetch loop to name the key")
            finally:
                await redis.delete(stream)
    (first, *_) = [e for e in logs if e["event"] == "fetch failed; retrying"]
    assert "holds a string where streamq keeps a stream" in str(first["error"])


async def test_doctor_lists_every_key_of_the_wrong_type(app: App) -> None:
    from streamq.doctor import Status, check_key_types

    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    redis = await app.redis()
    ok = await check_key_types(redis, app.keys)
    assert ok.status is Status.OK, ok
    wrong = {
        app.keys.stream("high"): "string",
        app.keys.events: "hash",
        app.keys.delayed: "list",
        app.keys.job("handmade"): "string",
        app.keys.lock("janitor"): "hash",
        app.keys.unique("k"): "set",
    }
    await redis.set(app.keys.stream("high"), "x")
    await redis.delete(app.keys.events)
    await redis.hset(app.keys.events, "a", "b")
    await redis.rpush(app.keys.delayed, "x")
    await redis.set(app.keys.job("handmade"), "x")
    await redis.hset(app.keys.lock("janitor"), "a", "b")
    await redis.sadd(app.keys.unique("k"), "x")
    try:
        check = await check_key_types(redis, app.keys)
        assert check.name == "keys"
        assert check.status is Status.PROBLEM
        for key, actual in wrong.items():
            assert f"{key} is a {actual}" in check.detail, check.detail
        assert "stream" in check.detail and "zset" in check.detail
        assert app.keys.job(job.id) not in check.detail
        assert app.keys.stream("default") not in check.detail
        assert "RENAME" in check.fix and "DEL" in check.fix
    finally:
        await redis.delete(*wrong, app.keys.job(job.id))
