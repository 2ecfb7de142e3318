"""Prometheus metrics for a worker (the optional extra ``streamq[metrics]``).

Counters and histograms are updated where the worker learns the fact (an
outcome recorded by Redis, a reclaim, a dead letter), so they count what
happened, not what was attempted. Queue gauges (depth, lag, pending, delayed,
DLQ size) are sampled from Redis every few seconds. Each worker has its own
registry, so two workers in one process do not collide.

Several worker processes (``streamq worker --processes N``) use
prometheus-client's multiprocess mode: the supervisor gives its children a
fresh ``PROMETHEUS_MULTIPROC_DIR``, each child writes its values there
(``WorkerMetrics(app, multiprocess=True)``, nothing served), and the
supervisor serves their sum (``ProcessesMetrics``). Counters of a child that
exited stay in the total; the queue gauges, sampled by every child, show the
most recent sample of a live one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import anyio
from redis.exceptions import RedisError

from streamq.errors import ConfigError
from streamq.logging import get_logger

if TYPE_CHECKING:
    from streamq.app import App

try:
    import prometheus_client as prom
    from prometheus_client import multiprocess
    from prometheus_client.core import CounterMetricFamily
except ImportError:  # pragma: no cover - exercised only without the extra
    prom = None  # type: ignore[assignment]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_MISSING = "metrics need prometheus-client: pip install 'streamq[metrics]'"
# Every child samples the same queue: show the latest sample of a live child.
_GAUGE_MODE: Final = "livemostrecent"

_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class WorkerMetrics:
    """A worker's metrics; ``multiprocess=True`` in a supervised child (see the module)."""

    def __init__(
        self, app: App, sample_interval_s: float = 5.0, *, multiprocess: bool = False
    ) -> None:
        if prom is None:
            raise ConfigError(_MISSING)
        if multiprocess and not os.environ.get(MULTIPROC_ENV):
            raise ConfigError(f"multiprocess metrics need ${MULTIPROC_ENV} (set by the supervisor)")
        self.app = app
        self.sample_interval_s = sample_interval_s
        self.registry = prom.CollectorRegistry()
        q = ["queue"]
        self.jobs = prom.Counter(
            "streamq_jobs", "Jobs whose outcome was recorded, by task and outcome "
            "(succeeded, retried, failed, dead, lost).", [*q, "task", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.duration = prom.Histogram(
            "streamq_job_duration_seconds", "Handler run time.", [*q, "task"],
            buckets=_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.retries = prom.Counter(
            "streamq_retries", "Failed attempts scheduled to run again.", [*q, "task"],
            registry=self.registry,
        )  # fmt: skip
        self.reclaims = prom.Counter(
            "streamq_reclaims", "Messages taken over from a stalled or dead consumer.", q,
            registry=self.registry,
        )  # fmt: skip
        p = [*q, "priority"]
        self.depth = prom.Gauge(
            "streamq_queue_depth", "Unread plus pending messages per stream.", p,
            registry=self.registry, multiprocess_mode=_GAUGE_MODE,
        )  # fmt: skip
        self.lag = prom.Gauge(
            "streamq_queue_lag", "Messages not yet read by the group.", p,
            registry=self.registry, multiprocess_mode=_GAUGE_MODE,
        )  # fmt: skip
        self.pending = prom.Gauge(
            "streamq_queue_pending", "Messages delivered and not yet acked.", p,
            registry=self.registry, multiprocess_mode=_GAUGE_MODE,
        )  # fmt: skip
        self.delayed = prom.Gauge(
            "streamq_delayed", "Jobs in the delayed set.", q,
            registry=self.registry, multiprocess_mode=_GAUGE_MODE,
        )  # fmt: skip
        self.dlq = prom.Gauge(
            "streamq_dlq_size", "Entries in the DLQ.", q,
            registry=self.registry, multiprocess_mode=_GAUGE_MODE,
        )  # fmt: skip
        self._log = get_logger(queue=app.name)
        self._server: Any = None

    # -- facts from the worker ------------------------------------------------------

    def outcome(self, task: str, outcome: str, duration_ms: int) -> None:
        name = self.app.name
        self.jobs.labels(name, task, outcome).inc()
        if outcome != "lost":
            self.duration.labels(name, task).observe(duration_ms / 1000)
        if outcome == "retried":
            self.retries.labels(name, task).inc()

    def reclaimed(self, count: int) -> None:
        if count:
            self.reclaims.labels(self.app.name).inc(count)

    # -- sampling and serving --------------------------------------------------------

    async def sample(self) -> None:
        """One ``stats.collect`` snapshot (one pipeline per partition; lag estimated
        when unknown), summed over every partition, as ``streamq stats`` shows it:
        the ones above a lowered count too (the high-water mark)."""
        from streamq.partition_ops import collect_all  # its imports load this module

        snapshot = await collect_all(self.app)
        name = self.app.name
        for p in snapshot.priorities:
            lag = p.lag or 0  # unknown even as an estimate: report none rather than guess
            self.lag.labels(name, p.priority).set(lag)
            self.pending.labels(name, p.priority).set(p.pending)
            self.depth.labels(name, p.priority).set(lag + p.pending)
        self.delayed.labels(name).set(snapshot.delayed)
        self.dlq.labels(name).set(snapshot.dlq)

    async def run_sampler(self) -> None:
        while True:
            try:
                await self.sample()
            except RedisError as exc:
                self._log.warning("metrics sample failed", error=str(exc))
            await anyio.sleep(self.sample_interval_s)

    def serve(self, port: int, host: str) -> int:
        """Serve /metrics on host:port in a thread; returns the bound port (0 picks one)."""
        assert prom is not None
        server, _thread = prom.start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def render(self) -> bytes:
        assert prom is not None
        return bytes(prom.generate_latest(self.registry))


class ProcessesMetrics:
    """The supervisor's endpoint: its children's metrics summed, and its restarts.

    Owns the multiprocess directory: a fresh one per supervisor (``env()`` is
    what the children need), removed by ``close()``.
    """

    def __init__(self) -> None:
        if prom is None:
            raise ConfigError(_MISSING)
        self.directory = tempfile.mkdtemp(prefix="streamq-metrics-")
        self.restarts = 0
        self.registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(self.registry, path=self.directory)  # type: ignore[no-untyped-call]
        self.registry.register(self)
        self._server: Any = None

    def env(self) -> dict[str, str]:
        return {MULTIPROC_ENV: self.directory}

    def restarted(self) -> None:
        self.restarts += 1

    def exited(self, pid: int) -> None:
        """A child is gone: its live gauges leave the aggregate (its counters stay)."""
        multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily(
            "streamq_worker_restarts",
            "Worker processes the supervisor restarted after an unexpected exit.",
            value=self.restarts,
        )

    def serve(self, port: int, host: str) -> int:
        """Serve /metrics on host:port in a thread; returns the bound port (0 picks one)."""
        assert prom is not None
        server, _thread = prom.start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def render(self) -> bytes:
        assert prom is not None
        return bytes(prom.generate_latest(self.registry))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self.directory, ignore_errors=True)
