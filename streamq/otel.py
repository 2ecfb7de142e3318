"""OpenTelemetry tracing for streamq (the optional extra ``pip install 'streamq[otel]'``).

``OpenTelemetryMiddleware`` makes one trace of a job's whole life::

    from streamq.otel import OpenTelemetryMiddleware

    app = App("emails", middleware=[OpenTelemetryMiddleware()])

- **publish** (producer side, ``on_enqueue``): a PRODUCER span ``publish <queue>``
  per job, a child of whatever span is current (e.g. the web request that
  enqueued it). Its context is written into the job's headers (``traceparent``
  and ``tracestate``, through the global propagator: W3C Trace Context unless
  the application chose another), so it travels with the job, through retries,
  reclaims and a replay's redrive. ``on_enqueue`` runs before the job's id is
  drawn and before anything is sent, so this span is short: it marks the
  moment the job was handed to streamq, not the round trip to Redis (a
  ``job_id`` chosen by the caller is known, and is its ``messaging.message.id``).
- **process** (worker side, ``around``): a CONSUMER span ``process <queue>`` per
  attempt, whose parent is the publish span read back from the headers, so
  request → publish → every attempt is one trace. Each attempt's span also
  carries a link to the publish span. A failed attempt records the exception
  and has status ERROR, even when it is retried; a job cut off by the worker's
  shutdown is not a failure and ends its span without an error. Spans the
  handler starts nest under it, on a sync handler's thread too.

Attributes follow the OpenTelemetry messaging semantic conventions:
``messaging.system`` is ``"redis"`` (the conventions list no Redis Streams
value and allow others; the broker is what a backend groups by, as Redis
client spans say ``db.system`` ``"redis"``), ``messaging.operation.name``
(``publish``/``process``), ``messaging.operation.type`` (``send``/``process``)
and the older ``messaging.operation``, ``messaging.destination.name`` (the
queue), ``messaging.consumer.group.name``, ``messaging.message.id`` (the job
id), ``error.type`` on a failure, and streamq's own ``messaging.streamq.task``,
``messaging.streamq.attempt`` and ``messaging.streamq.deliveries``.

Only ``opentelemetry-api`` is needed (``import streamq`` never imports it);
the application configures the SDK and exporters as usual. Without a
``tracer_provider``, the global one is used.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from streamq.keys import GROUP
from streamq.middleware import Middleware

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, TracerProvider

    from streamq.progress import JobContext
    from streamq.task import Task

__all__ = ["OpenTelemetryMiddleware"]

SYSTEM = "redis"
INSTRUMENTATION = "streamq"

# The process span of the run in this context, for ``on_error`` (set by ``around``).
_process_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "streamq_otel_process_span", default=None
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamq")
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        return "0"


class OpenTelemetryMiddleware(Middleware):
    """A producer span per enqueue and a consumer span per job run, in one trace.

    ``tracer_provider``: where the spans go (None: the global provider).
    ``propagator``: how the trace context is written into the job's headers and
    read back (None: the global propagator, W3C Trace Context by default).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        try:
            from opentelemetry import propagate, trace
        except ImportError as exc:
            raise ImportError(
                "streamq.otel needs the OpenTelemetry API: pip install 'streamq[otel]'"
            ) from exc
        self._trace = trace
        self._tracer = trace.get_tracer(
            INSTRUMENTATION, _version(), tracer_provider=tracer_provider
        )
        self._propagator = propagator if propagator is not None else propagate.get_global_textmap()

    async def on_enqueue(
        self,
        task: Task[Any, Any, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> Mapping[str, str]:
        trace = self._trace
        attributes: dict[str, str] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "publish",
            "messaging.operation.type": "send",
            "messaging.operation": "publish",
            "messaging.destination.name": task.app.name,
            "messaging.streamq.task": task.name,
        }
        if task.options.job_id is not None:
            attributes["messaging.message.id"] = task.options.job_id
        span = self._tracer.start_span(
            f"publish {task.app.name}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        )
        with trace.use_span(span, end_on_exit=True):
            carrier = dict(headers)
            self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    @asynccontextmanager
    async def around(self, ctx: JobContext) -> AsyncIterator[None]:
        trace = self._trace
        from opentelemetry.trace import Link

        parent = self._propagator.extract(ctx.headers)
        producer = trace.get_current_span(parent).get_span_context()
        attributes: dict[str, str | int] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.operation": "process",
            "messaging.destination.name": ctx.app.name,
            "messaging.consumer.group.name": GROUP,
            "messaging.message.id": ctx.job_id,
            "messaging.streamq.task": ctx.task,
            "messaging.streamq.attempt": ctx.attempt,
            "messaging.streamq.deliveries": ctx.deliveries,
        }
        span = self._tracer.start_span(
            f"process {ctx.app.name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(producer)] if producer.is_valid else None,
        )
        # Failures are recorded by ``on_error``, which streamq calls for failures
        # only: a shutdown's cancellation passes through here without an error.
        with trace.use_span(span, end_on_exit=True, record_exception=False,
                            set_status_on_exception=False):  # fmt: skip
            token = _process_span.set(span)
            try:
                yield
            finally:
                _process_span.reset(token)

    async def on_error(self, ctx: JobContext, exc: BaseException) -> None:
        span = _process_span.get()
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        from streamq.errors import JobTimedOut

        error_type = "JobTimedOut" if isinstance(exc, JobTimedOut) else type(exc).__qualname__
        span.record_exception(exc, attributes={"exception.type": error_type})
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, f"{error_type}: {exc}"))
