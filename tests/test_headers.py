"""Job headers: string pairs set by the caller (``with_options(headers=...)``) or a
producer hook, stored in the stream entry, and seen by the handler, middleware,
``streamq replay`` and every later life of the job (retry, schedule, DLQ requeue)."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

import streamq
from streamq import App, ConfigError, EnqueueError, JobStatus, Middleware, Retry, Settings, Task
from streamq.cli import cli
from streamq.dlq import DeadLetters
from streamq.envelope import PoisonMessage, decode
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio


def fast_app(redis_url: str, **options: Any) -> App:
    """An App whose janitor promotes due retries every 50 ms."""
    return App(
        queue_name(),
        settings=Settings.from_env(redis_url=redis_url, janitor_interval_s=0.05),
        **options,
    )


async def entry_fields(app: App, priority: str = "default") -> list[dict[bytes, bytes]]:
    redis = await app.redis()
    return [fields for _, fields in await redis.xrange(app.keys.stream(priority))]


async def test_headers_reach_the_entry_and_the_handler(app: App) -> None:
    @app.task(name="seen")
    async def seen() -> dict[str, str]:
        headers = streamq.current_job().headers
        with pytest.raises(TypeError):
            headers["x"] = "y"  # type: ignore[index]
        return dict(headers)

    job = await seen.with_options(headers={"tenant": "acme", "trace": "é/1"}).enqueue()
    plain = await seen.enqueue()
    (first, second) = await entry_fields(app)
    assert json.loads(first[b"headers"]) == {"tenant": "acme", "trace": "é/1"}
    assert b"headers" not in second, "no headers, no field"
    async with running_worker(app):
        assert await job.result(timeout=10) == {"tenant": "acme", "trace": "é/1"}
        assert await plain.result(timeout=10) == {}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({1: "x"}, "header names must be"),
        ({"": "x"}, "header names must be"),
        ({"k": 1}, "header values must be strings"),
        ({"k": None}, "header values must be strings"),
        ({"k": "\ud800"}, "UTF-8"),
        ({"k": "x" * 9000}, "bytes"),
        ("tenant=acme", "a mapping"),
    ],
)
async def test_bad_headers_are_a_config_error_at_with_options(
    app: App, headers: Any, message: str
) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    with pytest.raises(ConfigError, match=message):
        t.with_options(headers=headers)


async def test_a_producer_hook_adds_headers_visible_in_the_worker_and_in_replay(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tenant(Middleware):
        async def on_enqueue(
            self,
            task: Task[Any, Any, Any],
            args: Sequence[Any],
            kwargs: Mapping[str, Any],
            headers: Mapping[str, str],
        ) -> Mapping[str, str]:
            return {**headers, "tenant": f"{task.name}:{args[0]}"}

    app = App(queue_name(), redis_url=redis_url, middleware=[Tenant()])
    module = types.ModuleType(f"streamq_headers_test_{app.name}")
    module.app = App(app.name, redis_url=redis_url)  # type: ignore[attr-defined]  # for the CLI
    monkeypatch.setitem(sys.modules, module.__name__, module)

    @app.task(name="greet")
    async def greet(who: str) -> dict[str, str]:
        return dict(streamq.current_job().headers)

    async with app:
        job = await greet.with_options(headers={"request": "r-1"}).enqueue("ada")
        many = await greet.enqueue_many([("bob",), ("eve",)])
        async with running_worker(app):
            assert await job.result(timeout=10) == {"request": "r-1", "tenant": "greet:ada"}
            assert [await j.result(timeout=10) for j in many] == [
                {"tenant": "greet:bob"},
                {"tenant": "greet:eve"},
            ]
        runner = CliRunner()
        result = await anyio.to_thread.run_sync(
            lambda: runner.invoke(cli, ["replay", f"{module.__name__}:app", "--job", job.id])
        )
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.stdout.splitlines()]
        (message,) = [r for r in records if r["source"] == "message"]
        assert json.loads(message["headers"]) == {"request": "r-1", "tenant": "greet:ada"}
        await drop_queue(app)


async def test_a_hook_returning_bad_headers_refuses_the_enqueue(redis_url: str) -> None:
    class Broken(Middleware):
        async def on_enqueue(
            self,
            task: Task[Any, Any, Any],
            args: Sequence[Any],
            kwargs: Mapping[str, Any],
            headers: Mapping[str, str],
        ) -> Mapping[str, str]:
            return {"n": 1}  # type: ignore[dict-item]

    app = App(queue_name(), redis_url=redis_url, middleware=[Broken()])

    @app.task(name="t")
    async def t() -> None: ...

    async with app:
        with pytest.raises(EnqueueError, match="header values must be strings"):
            await t.enqueue()
        assert await entry_fields(app) == []


async def test_headers_survive_retries_through_the_stream_and_the_delayed_set(
    redis_url: str,
) -> None:
    app = fast_app(redis_url)
    seen: list[tuple[int, dict[str, str]]] = []

    @app.task(name="flaky", max_retries=2)
    async def flaky() -> int:
        ctx = streamq.current_job()
        seen.append((ctx.attempt, dict(ctx.headers)))
        if ctx.attempt == 1:
            raise Retry(delay=0)  # straight back to its stream
        if ctx.attempt == 2:
            raise Retry(delay=0.05)  # through the delayed set and the janitor's promotion
        return ctx.attempt

    async with app:
        job = await flaky.with_options(headers={"tenant": "acme"}).enqueue()
        async with running_worker(app):
            assert await job.result(timeout=10) == 3
        assert seen == [(n, {"tenant": "acme"}) for n in (1, 2, 3)]
        await drop_queue(app)


async def test_headers_survive_a_scheduled_enqueue(redis_url: str) -> None:
    app = fast_app(redis_url)

    @app.task(name="later")
    async def later() -> dict[str, str]:
        return dict(streamq.current_job().headers)

    async with app:
        job = await later.with_options(headers={"tenant": "acme"}).enqueue_in(0.05)
        async with running_worker(app):
            assert await job.result(timeout=10) == {"tenant": "acme"}
        await drop_queue(app)


async def test_headers_survive_a_dlq_requeue(app: App) -> None:
    fixed = False

    @app.task(name="charge", max_retries=0)
    async def charge() -> dict[str, str]:
        if not fixed:
            raise KeyError("EUR")
        return dict(streamq.current_job().headers)

    job = await charge.with_options(headers={"tenant": "acme"}).enqueue()
    async with running_worker(app):
        assert await job.wait(timeout=10) == JobStatus.FAILED
        (dead,) = [d async for d in DeadLetters(app).iter()]
        assert json.loads(dead.fields["headers"]) == {"tenant": "acme"}
        fixed = True
        assert await DeadLetters(app).requeue(dead.id)
        assert await job.result(timeout=10) == {"tenant": "acme"}


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1]", b'{"k": 1}', b'{"k": null}', b"\xff", b'{"": "x"}']
)
def test_headers_that_are_not_an_object_of_strings_make_a_poison_message(raw: bytes) -> None:
    fields = {
        b"v": b"1", b"id": b"j", b"task": b"t", b"ct": b"json",
        b"payload": b'{"args":[],"kwargs":{}}', b"headers": raw,
    }  # fmt: skip
    with pytest.raises(PoisonMessage, match="headers"):
        decode(fields)


def test_decoded_headers_are_read_only() -> None:
    fields = {
        b"v": b"1", b"id": b"j", b"task": b"t", b"ct": b"json",
        b"payload": b"{}", b"headers": b'{"a": "b"}',
    }  # fmt: skip
    envelope = decode(fields)
    assert dict(envelope.headers) == {"a": "b"}
    with pytest.raises(TypeError):
        envelope.headers["a"] = "c"  # type: ignore[index]
    del fields[b"headers"]
    assert dict(decode(fields).headers) == {}


async def test_per_job_headers_keep_their_jobs_in_order_across_batches(redis_url: str) -> None:
    """Jobs whose hook-made headers differ go in separate script calls, in order."""

    class Group(Middleware):
        async def on_enqueue(
            self,
            task: Task[Any, Any, Any],
            args: Sequence[Any],
            kwargs: Mapping[str, Any],
            headers: Mapping[str, str],
        ) -> Mapping[str, str]:
            n = args[0]
            return {} if n % 50 == 0 else {"group": str(n // 7)}

    app = App(queue_name(), redis_url=redis_url, middleware=[Group()])

    @app.task(name="t")
    async def t(n: int) -> None: ...

    async with app:
        jobs = await t.enqueue_many([(n,) for n in range(250)])
        entries = await entry_fields(app)
        assert [e[b"id"].decode() for e in entries] == [j.id for j in jobs]
        for n, fields in enumerate(entries):
            assert json.loads(fields[b"payload"])["args"] == [n]
            expected = None if n % 50 == 0 else {"group": str(n // 7)}
            assert (json.loads(fields[b"headers"]) if b"headers" in fields else None) == expected
        await drop_queue(app)
