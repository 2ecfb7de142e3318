"""OpenTelemetry (``streamq[otel]``): a producer span per enqueue, a consumer span per
job run, one trace from the enqueueing request to every attempt of the job.

Spans go to the SDK's in-memory exporter through a TracerProvider given to the
middleware; the global provider is never touched.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

import streamq
from streamq import App, JobFailed, Middleware, Settings
from streamq.otel import OpenTelemetryMiddleware
from tests.conftest import drop_queue, queue_name, running_worker, subprocess_env, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def provider() -> TracerProvider:
    return TracerProvider()


@pytest.fixture
def exporter(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    provider.shutdown()


def make_app(redis_url: str, middleware: Sequence[Middleware]) -> App:
    """An App whose janitor promotes due retries every 50 ms."""
    return App(
        queue_name(),
        settings=Settings.from_env(redis_url=redis_url, janitor_interval_s=0.05),
        middleware=middleware,
    )


def ids(context: SpanContext | None) -> tuple[int, int]:
    """A span context's trace and span ids (a link holds the remote copy of one)."""
    assert context is not None
    return context.trace_id, context.span_id


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_one_trace_from_the_request_through_publish_to_process(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = make_app(redis_url, [OpenTelemetryMiddleware(tracer_provider=provider)])
    seen: list[dict[str, str]] = []

    @app.task(name="signup_email")
    async def signup_email(user: str) -> str:
        seen.append(dict(streamq.current_job().headers))
        return f"hi {user}"

    async with app:
        with provider.get_tracer("web").start_as_current_span(
            "POST /signup", kind=SpanKind.SERVER
        ) as request:
            job = await signup_email.with_options(headers={"tenant": "acme"}).enqueue("ann")
        async with running_worker(app):
            assert await job.result(timeout=10) == "hi ann"
            await wait_until(lambda: bool(named(exporter, f"process {app.name}")), 10, "spans")
        await drop_queue(app)

    (publish,) = named(exporter, f"publish {app.name}")
    (process,) = named(exporter, f"process {app.name}")
    trace_id = request.get_span_context().trace_id
    assert publish.context is not None and process.context is not None

    assert publish.kind == SpanKind.PRODUCER
    assert publish.context.trace_id == trace_id
    assert publish.parent is not None
    assert publish.parent.span_id == request.get_span_context().span_id
    assert publish.attributes is not None
    assert dict(publish.attributes) == {
        "messaging.system": "redis",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.operation": "publish",
        "messaging.destination.name": app.name,
        "messaging.streamq.task": "signup_email",
    }

    assert process.kind == SpanKind.CONSUMER
    assert process.context.trace_id == trace_id
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert [ids(link.context) for link in process.links] == [ids(publish.context)]
    assert process.attributes is not None
    assert dict(process.attributes) == {
        "messaging.system": "redis",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.operation": "process",
        "messaging.destination.name": app.name,
        "messaging.consumer.group.name": "workers",
        "messaging.message.id": job.id,
        "messaging.streamq.task": "signup_email",
        "messaging.streamq.attempt": 1,
        "messaging.streamq.deliveries": 1,
    }
    assert process.status.status_code == StatusCode.UNSET

    # The trace context travels in the job's headers, beside the caller's own.
    (headers,) = seen
    assert headers["tenant"] == "acme"
    assert headers["traceparent"].split("-")[2] == format(publish.context.span_id, "016x")


async def test_a_chosen_job_id_is_the_publish_spans_message_id(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = make_app(redis_url, [OpenTelemetryMiddleware(tracer_provider=provider)])

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app:
        await noop.with_options(job_id="order-42").enqueue()
        await drop_queue(app)
    (publish,) = named(exporter, f"publish {app.name}")
    assert publish.attributes is not None
    assert publish.attributes["messaging.message.id"] == "order-42"


async def test_each_attempt_is_a_process_span_in_the_trace_linked_to_the_publish(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = make_app(redis_url, [OpenTelemetryMiddleware(tracer_provider=provider)])

    @app.task(name="flaky", max_retries=1, backoff_base=0.01)
    async def flaky() -> int:
        attempt = streamq.current_job().attempt
        if attempt == 1:
            raise ConnectionError("smtp down")
        return attempt

    async with app:
        job = await flaky.enqueue()
        async with running_worker(app):
            assert await job.result(timeout=10) == 2
            await wait_until(lambda: len(named(exporter, f"process {app.name}")) == 2, 10, "spans")
        await drop_queue(app)

    (publish,) = named(exporter, f"publish {app.name}")
    assert publish.context is not None
    first, second = sorted(
        named(exporter, f"process {app.name}"),
        key=lambda span: str((span.attributes or {})["messaging.streamq.attempt"]),
    )
    for span in (first, second):
        assert span.context is not None and span.parent is not None
        assert span.context.trace_id == publish.context.trace_id
        assert span.parent.span_id == publish.context.span_id
        assert [ids(link.context) for link in span.links] == [ids(publish.context)]
    assert first.status.status_code == StatusCode.ERROR
    assert first.attributes is not None
    assert first.attributes["error.type"] == "ConnectionError"
    (event,) = first.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ConnectionError"
    assert event.attributes["exception.message"] == "smtp down"
    assert second.status.status_code == StatusCode.UNSET
    assert not second.events


async def test_a_failure_that_is_not_retried_is_an_error_span(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = make_app(redis_url, [OpenTelemetryMiddleware(tracer_provider=provider)])

    @app.task(name="bad", max_retries=0)
    def bad() -> None:
        raise ValueError("no such user")

    async with app:
        job = await bad.enqueue()
        async with running_worker(app):
            with pytest.raises(JobFailed):
                await job.result(timeout=10)
            await wait_until(lambda: bool(named(exporter, f"process {app.name}")), 10, "spans")
        await drop_queue(app)
    (process,) = named(exporter, f"process {app.name}")
    assert process.status.status_code == StatusCode.ERROR
    assert [event.name for event in process.events] == ["exception"]


async def test_a_timed_out_attempt_is_an_error_span_of_type_job_timed_out(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = make_app(redis_url, [OpenTelemetryMiddleware(tracer_provider=provider)])

    @app.task(name="stuck", max_retries=0, timeout=0.05)
    async def stuck() -> None:
        await anyio.sleep_forever()

    async with app:
        job = await stuck.enqueue()
        async with running_worker(app):
            with pytest.raises(JobFailed):
                await job.result(timeout=10)
            await wait_until(lambda: bool(named(exporter, f"process {app.name}")), 10, "spans")
        await drop_queue(app)
    (process,) = named(exporter, f"process {app.name}")
    assert process.status.status_code == StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["error.type"] == "JobTimedOut"
    (event,) = process.events
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "JobTimedOut"


async def test_spans_a_sync_handler_starts_nest_under_the_process_span(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = make_app(redis_url, [OpenTelemetryMiddleware(tracer_provider=provider)])
    tracer = provider.get_tracer("handler")

    @app.task(name="resize")
    def resize(size: int) -> int:
        with tracer.start_as_current_span("resize image"):
            return size // 2

    async with app:
        job = await resize.enqueue(640)
        async with running_worker(app):
            assert await job.result(timeout=10) == 320
            await wait_until(lambda: bool(named(exporter, f"process {app.name}")), 10, "spans")
        await drop_queue(app)
    (process,) = named(exporter, f"process {app.name}")
    (inner,) = named(exporter, "resize image")
    assert process.context is not None and inner.context is not None and inner.parent is not None
    assert inner.context.trace_id == process.context.trace_id
    assert inner.parent.span_id == process.context.span_id


async def test_a_job_enqueued_without_trace_context_gets_a_root_process_span(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A producer without the middleware (or an older job): a new trace, no link."""
    name = queue_name()
    settings = Settings.from_env(redis_url=redis_url)
    producer = App(name, settings=settings)
    consumer = App(name, settings=settings, middleware=[OpenTelemetryMiddleware(provider)])
    for app in (producer, consumer):

        @app.task(name="ping")
        async def ping() -> str:
            return "pong"

    async with producer, consumer:
        job = await producer.enqueue("ping")
        async with running_worker(consumer):
            assert await job.result(timeout=10) == "pong"
            await wait_until(lambda: bool(named(exporter, f"process {name}")), 10, "spans")
        await drop_queue(consumer)
    (process,) = exporter.get_finished_spans()
    assert process.parent is None
    assert not process.links


def test_streamq_runs_without_opentelemetry_installed(redis_url: str) -> None:
    """With opentelemetry unimportable, streamq imports and runs jobs; only building
    the middleware fails, and its error names the extra to install."""
    script = textwrap.dedent(
        """
        import sys

        class NoOpenTelemetry:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())

        import anyio
        import streamq
        import streamq.otel

        app = streamq.App(sys.argv[1], redis_url=sys.argv[2])

        @app.task(name="add")
        async def add(a: int, b: int) -> int:
            return a + b

        async def main() -> None:
            async with app:
                job = await add.enqueue(2, 3)
                await streamq.Worker(app, burst=True).run()
                print("result", await job.result(timeout=10))
                redis = await app.redis()
                async for key in redis.scan_iter(match=app.keys.pattern()):
                    await redis.delete(key)

        anyio.run(main)
        print("loaded", sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        try:
            streamq.otel.OpenTelemetryMiddleware()
        except ImportError as exc:
            print("error", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, queue_name(), redis_url],
        env=subprocess_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["result 5", "loaded []"]
    assert lines[2].startswith("error ")
    assert "pip install 'streamq[otel]'" in lines[2]
