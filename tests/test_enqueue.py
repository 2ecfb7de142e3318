"""Enqueue: one XADD to the task's priority stream, a job hash, an event, a Job handle."""

from __future__ import annotations

import json
import re

import pytest

from streamq import (
    App,
    JobFailed,
    JobNotFound,
    JobStatus,
    PayloadTooLarge,
    SerializationError,
    Settings,
)
from streamq.keys import GROUP
from tests.conftest import queue_name, running_worker

pytestmark = pytest.mark.anyio


async def entries(app: App, priority: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    redis = await app.redis()
    return await redis.xrange(app.keys.stream(priority))  # type: ignore[no-any-return]


async def test_enqueue_adds_one_message_to_the_priority_stream(app: App) -> None:
    @app.task(name="mail.send", priority="high")
    async def send(to: str, subject: str) -> None: ...

    job = await send.enqueue("a@example.com", subject="hi")
    redis = await app.redis()
    assert app.keys.stream("high") == f"streamq:{{{app.name}}}:stream:high"
    ((msg_id, fields),) = await entries(app, "high")
    assert fields[b"id"] == job.id.encode()
    assert fields[b"task"] == b"mail.send"
    assert fields[b"attempt"] == b"1"
    assert json.loads(fields[b"payload"]) == {
        "args": ["a@example.com"],
        "kwargs": {"subject": "hi"},
    }
    info = await job.info()
    assert info["status"] == "queued" and info["task"] == "mail.send"
    assert info["priority"] == "high" and info["msg_id"] == msg_id.decode()
    assert await redis.pttl(app.keys.job(job.id)) == -1  # no TTL until final
    events = await redis.xrange(app.keys.events)
    assert [e[1][b"kind"] for e in events] == [b"enqueued"]
    assert await entries(app, "default") == []


async def test_group_is_created_at_zero_so_early_jobs_are_delivered(app: App) -> None:
    """A group created with `$` would skip jobs enqueued before the first worker."""

    @app.task
    async def noop() -> str:
        return "ran"

    job = await noop.enqueue()
    redis = await app.redis()
    groups = await redis.xinfo_groups(app.keys.stream("default"))
    assert [(g["name"], g["last-delivered-id"]) for g in groups] == [(GROUP.encode(), b"0-0")]
    async with running_worker(app):
        assert await job.result(timeout=10) == "ran"


async def test_with_options_overrides_priority_per_call(app: App) -> None:
    @app.task(priority="high")
    async def work(n: int) -> None: ...

    await work.with_options(priority="low").enqueue(1)
    await work.enqueue(2)
    assert len(await entries(app, "low")) == 1
    assert len(await entries(app, "high")) == 1


async def test_app_job_finds_a_job_again_by_id(app: App, redis_url: str) -> None:
    """A web app enqueues in one request and looks the job up in the next."""

    @app.task(name="echo")
    async def echo(x: str) -> str:
        return x

    job = await echo.enqueue("hello")
    other = App(app.name, redis_url=redis_url)
    async with other:
        again = other.job(job.id)
        assert await again.status() == JobStatus.QUEUED
        async with running_worker(app):
            assert await again.result(timeout=10) == "hello"


async def test_unknown_job_id(app: App) -> None:
    with pytest.raises(JobNotFound):
        await app.job("nope").status()
    with pytest.raises(JobNotFound):
        await app.job("nope").result(timeout=1)


async def test_unencodable_argument_is_a_type_error_naming_task_and_argument(app: App) -> None:
    @app.task(name="report.build")
    async def build(title: str, when: object) -> None: ...

    with pytest.raises(SerializationError) as info:
        await build.enqueue("ok", object())  # datetimes encode now: streamq.typed
    assert isinstance(info.value, TypeError)
    assert "report.build" in str(info.value) and "'when'" in str(info.value)
    assert await entries(app, "default") == []
    redis = await app.redis()
    assert not [k async for k in redis.scan_iter(match=app.keys.pattern())]


async def test_nan_is_rejected_rather_than_written_as_invalid_json(app: App) -> None:
    @app.task
    async def f(x: float) -> None: ...

    with pytest.raises(SerializationError):
        await f.enqueue(float("nan"))


async def test_arguments_that_do_not_fit_the_signature_are_rejected(app: App) -> None:
    @app.task(name="two")
    async def two(a: int, b: int) -> None: ...

    with pytest.raises(TypeError, match="'two'"):
        await two.enqueue(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        await two.enqueue(1, 2, c=3)  # type: ignore[call-arg]
    assert await entries(app, "default") == []


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1,), {"c": 2}, "task 'two': got an unexpected keyword argument 'c'"),
        ((), {"a": 1, "b": 2, "c": 3}, "got an unexpected keyword argument 'c'"),
        ((1, 2, 3), {}, "task 'two': takes 2 positional arguments but 3 were given"),
        ((1, 2, 3), {"c": 4}, "takes 2 positional arguments but 3 were given"),
        ((1,), {}, "missing a required argument: 'b'"),
        ((1,), {"a": 2}, "multiple values for argument 'a'"),
    ],
    ids=["unexpected-keyword", "unexpected-among-known", "too-many", "too-many-first",
         "missing", "twice"],
)  # fmt: skip
async def test_a_misfit_call_is_named_as_python_would(
    app: App, args: tuple[int, ...], kwargs: dict[str, int], message: str
) -> None:
    """The first thing Python itself would complain about, not a missing argument."""

    @app.task(name="two")
    async def two(a: int, b: int) -> None: ...

    with pytest.raises(TypeError) as info:
        await two.enqueue(*args, **kwargs)
    assert message in str(info.value)
    if not (args and kwargs):  # enqueue_many takes one or the other
        with pytest.raises(TypeError, match=re.escape(message)):
            await two.enqueue_many([kwargs or args])
    assert await entries(app, "default") == []


async def test_variadic_handlers_take_any_extra_arguments(app: App) -> None:
    @app.task(name="var")
    async def var(a: int, /, *args: int, **kwargs: int) -> None: ...

    @app.task(name="kwonly")
    async def kwonly(a: int, *, b: int = 0) -> None: ...

    await var.enqueue(1, 2, 3, a=4, z=5)  # 'a' by keyword lands in **kwargs
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        await kwonly.enqueue(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        await kwonly.enqueue(1, b=2, c=3)  # type: ignore[call-arg]
    assert len(await entries(app, "default")) == 1


@pytest.mark.parametrize(
    ("value", "culprit", "key_type"),
    [
        ({1: "a"}, "'mapping'", "int"),
        ({"ok": [{"fine": 1}, {2.5: "x"}]}, "'mapping'", "float"),
        ({True: 1}, "'mapping'", "bool"),
        ({None: 1}, "'mapping'", "NoneType"),
        ({"{" * 5: [[{"}": {3: 1}}]]}, "'mapping'", "int"),
    ],
    ids=["int", "nested-float", "bool", "none", "braces-in-strings"],
)
async def test_a_mapping_with_non_str_keys_is_refused(
    app: App, value: dict[object, object], culprit: str, key_type: str
) -> None:
    """JSON would turn the keys into strings, so the handler would not get what was sent."""

    @app.task(name="keys")
    async def keys(label: str, mapping: dict[object, object]) -> None: ...

    with pytest.raises(SerializationError) as info:
        await keys.enqueue("label", value)
    assert f"argument {culprit} of task 'keys'" in str(info.value)
    assert f"dict keys must be str, got {key_type}" in str(info.value)
    with pytest.raises(SerializationError, match="dict keys must be str"):
        await keys.enqueue("label", mapping={"outer": value})
    assert await entries(app, "default") == []


async def test_a_result_with_non_str_keys_fails_the_job_rather_than_changing(app: App) -> None:
    """The same rule for results: the caller would read {"1": "a"}, not what was returned."""

    @app.task(name="counts")
    async def counts() -> dict[int, str]:
        return {1: "a"}

    job = await counts.enqueue()
    async with running_worker(app):
        with pytest.raises(JobFailed) as info:
            await job.result(timeout=10)
    assert info.value.error_type == "SerializationError"
    assert "dict keys must be str, got int: 1" in str(info.value)


async def test_str_keyed_mappings_and_braces_in_strings_still_encode(app: App) -> None:
    @app.task(name="keys")
    async def keys(mapping: dict[str, object]) -> None: ...

    class Labels(dict[str, str]):
        pass

    value = {"{": "}", "a": [{"b": {"c": Labels(d="{{{")}}], "": {}}
    job = await keys.enqueue(value)
    ((_, fields),) = await entries(app, "default")
    assert json.loads(fields[b"payload"]) == {"args": [value], "kwargs": {}}
    assert job.id == fields[b"id"].decode()


async def test_payload_over_the_limit_is_refused(redis_url: str) -> None:
    app = App(queue_name(), redis_url=redis_url, settings=Settings(max_payload_bytes=1000))

    @app.task
    async def f(s: str) -> None: ...

    async with app:
        await f.enqueue("x" * 900)
        with pytest.raises(PayloadTooLarge):
            await f.enqueue("x" * 1000)
        redis = await app.redis()
        assert await redis.xlen(app.keys.stream("default")) == 1
        for key in [k async for k in redis.scan_iter(match=app.keys.pattern())]:
            await redis.delete(key)


async def test_enqueue_many_writes_all_or_nothing_at_encode_time(app: App) -> None:
    @app.task
    def resize(path: str, width: int = 100) -> str:
        return f"{path}@{width}"

    jobs = await resize.enqueue_many([("a.png",), ("b.png", 200), {"path": "c.png"}])
    assert len({j.id for j in jobs}) == 3
    assert len(await entries(app, "default")) == 3
    with pytest.raises(SerializationError):
        await resize.enqueue_many([("d.png",), ("e.png", object())])
    assert len(await entries(app, "default")) == 3  # the good item was not written either
    async with running_worker(app):
        assert [await j.result(timeout=10) for j in jobs] == ["a.png@100", "b.png@200", "c.png@100"]


async def test_enqueue_many_rejects_items_that_are_not_tuples_or_mappings(app: App) -> None:
    @app.task
    async def f(x: str) -> None: ...

    with pytest.raises(TypeError, match="tuples"):
        await f.enqueue_many(["abc"])  # type: ignore[list-item]


async def test_enqueue_is_idempotent_by_job_id(app: App) -> None:
    """Invariant 9: a second run of the same enqueue (a client retry) adds nothing."""

    @app.task
    async def f(x: int) -> None: ...

    first = await f.with_options(job_id="order-42").enqueue(1)
    second = await f.with_options(job_id="order-42").enqueue(1)
    assert first.id == second.id == "order-42"
    assert len(await entries(app, "default")) == 1
    redis = await app.redis()
    assert await redis.xlen(app.keys.events) == 1


async def test_enqueue_by_name(app: App) -> None:
    @app.task(name="by.name")
    async def f(x: int) -> int:
        return x + 1

    job = await app.enqueue("by.name", 41)
    async with running_worker(app):
        assert await job.result(timeout=10) == 42
    with pytest.raises(ValueError, match="no task"):
        await app.enqueue("missing")


async def test_enqueue_many_over_several_script_calls_keeps_order_and_events(app: App) -> None:
    """Past ENQUEUE_BATCH jobs, one enqueue_many sends several script calls in one round trip."""
    from streamq.app import ENQUEUE_BATCH

    @app.task(name="t")
    async def t(n: int) -> None: ...

    count = ENQUEUE_BATCH * 2 + 7
    jobs = await t.enqueue_many([(i,) for i in range(count)])
    stream = await entries(app, "default")
    assert [json.loads(f[b"payload"])["args"] for _, f in stream] == [[i] for i in range(count)]
    assert [f[b"id"].decode() for _, f in stream] == [j.id for j in jobs]
    redis = await app.redis()
    events = await redis.xrange(app.keys.events)
    assert [e[b"job"].decode() for _, e in events if e[b"kind"] == b"enqueued"] == [
        j.id for j in jobs
    ]
    assert {await j.status() for j in (jobs[0], jobs[ENQUEUE_BATCH], jobs[-1])} == {
        JobStatus.QUEUED
    }
