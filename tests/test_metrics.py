"""Prometheus metrics: counted from recorded outcomes, served over HTTP."""

from __future__ import annotations

import signal
import socket
import urllib.request

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamq import App, JobStatus
from streamq.metrics import WorkerMetrics
from tests.apps.process import streamq_child
from tests.apps.slow import ADD, FAIL, register
from tests.conftest import drop_queue, queue_name, running_worker, subprocess_env, wait_until

pytestmark = pytest.mark.anyio


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


async def test_worker_metrics_count_outcomes_and_sample_the_queue(app: App) -> None:
    register(app)
    metrics = WorkerMetrics(app, sample_interval_s=0.05)
    port = metrics.serve(0, "127.0.0.1")
    try:
        ok = [await app.enqueue(ADD, i, i) for i in range(3)]
        bad = await app.enqueue(FAIL, "nope")
        async with running_worker(app, metrics=metrics):
            for job in ok:
                await job.result(timeout=10)
            assert await app.job(bad.id).wait(timeout=10) == JobStatus.FAILED

            def sampled() -> bool:
                text = metrics.render().decode()
                return f'streamq_dlq_size{{queue="{app.name}"}} 1.0' in text

            await wait_until(sampled, description="the DLQ gauge to be sampled")
        text = await anyio.to_thread.run_sync(scrape, port)
    finally:
        metrics.close()
    q = app.name
    assert value(text, "streamq_jobs_total", queue=q, task=ADD, outcome="succeeded") == 3
    assert value(text, "streamq_jobs_total", queue=q, task=FAIL, outcome="retried") == 1
    assert value(text, "streamq_jobs_total", queue=q, task=FAIL, outcome="failed") == 1
    assert value(text, "streamq_retries_total", queue=q, task=FAIL) == 1
    assert value(text, "streamq_job_duration_seconds_count", queue=q, task=ADD) == 3
    assert value(text, "streamq_queue_pending", queue=q, priority="default") == 0


async def test_the_queue_gauges_sum_every_partition(redis_url: str) -> None:
    app = App(queue_name(), redis_url=redis_url, partitions=3)
    register(app)
    metrics = WorkerMetrics(app)
    async with app:
        jobs = [await app.enqueue(ADD, i, i) for i in range(6)]
        assert {job.partition for job in jobs} == {0, 1, 2}
        await metrics.sample()
        text = metrics.render().decode()
        assert value(text, "streamq_queue_lag", queue=app.name, priority="default") == 6
        for index in range(3):
            await drop_queue(app.partition(index))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_worker_cli_serves_metrics(redis_url: str) -> None:
    name = queue_name()
    app = register(App(name, redis_url=redis_url))
    port = free_port()
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=name)
    args = ["worker", "tests.apps.slow:app", "--metrics-port", str(port)]
    async with app, streamq_child(args, env=env) as child:
        job = await app.enqueue(ADD, 2, 2)
        assert await job.result(timeout=20) == 4

        async def counted() -> bool:
            try:
                text = await anyio.to_thread.run_sync(scrape, port)
            except OSError:
                return False
            return "streamq_jobs_total" in text and 'outcome="succeeded"' in text

        await wait_until(counted, timeout=20, description="the metrics endpoint to count the job")
        child.signal(signal.SIGTERM)
        assert await child.wait(timeout_s=20) == 0
        await drop_queue(app)
