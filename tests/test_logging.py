"""Worker logs: JSON lines off a terminal, and job context on every job event.

An operator greps a worker's log by job id; a log pipeline indexes its JSON
fields. So every job outcome line ("job succeeded", "job retried", "job
failed") must carry job_id, task, queue, attempt and duration_ms, both in a
real worker process (stdout a pipe, so JSON) and as structlog's
``capture_logs`` sees it in-process. Assertions are on parsed dicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from streamq import App, JobFailed, Worker, configure_logging
from tests.apps.process import streamq_child
from tests.apps.slow import ADD, FAIL, register
from tests.conftest import subprocess_env

pytestmark = pytest.mark.anyio

JOB_EVENTS = {"job succeeded", "job retried", "job failed"}
JOB_CONTEXT = {"job_id", "task", "queue", "attempt", "duration_ms"}


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Start from structlog's defaults and leave the configuration as it was found.

    A CLI entry point run in-process elsewhere may have configured a level
    filter or an output stream; these tests must not depend on that or leak theirs.
    """
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def job_events(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("event") in JOB_EVENTS]


def expected_outcomes(ok_id: str, failing_id: str) -> list[tuple[str, str, str, int]]:
    return [
        ("job succeeded", ok_id, ADD, 1),
        ("job retried", failing_id, FAIL, 1),
        ("job failed", failing_id, FAIL, 2),
    ]


def assert_job_context(events: Sequence[Mapping[str, Any]], app: App) -> None:
    for record in events:
        missing = JOB_CONTEXT - record.keys()
        assert not missing, f"{record['event']!r} lacks {sorted(missing)}: {record}"
        assert record["queue"] == app.name
        assert isinstance(record["attempt"], int)
        assert isinstance(record["duration_ms"], int)
        assert record["duration_ms"] >= 0


def outcome_tuples(events: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, int]]:
    return sorted((r["event"], r["job_id"], r["task"], r["attempt"]) for r in events)


async def test_worker_process_logs_json_lines_with_job_context(app: App, redis_url: str) -> None:
    """Off a terminal the worker prints one JSON object per line, job events with context.

    A burst worker runs one succeeding job and one that fails twice (a retry,
    then a final failure). Every stdout line must parse as JSON; each job
    event carries job_id, task, queue, attempt and duration_ms. Without the
    JSON choice by ``isatty()`` the lines would be console text and fail to
    parse; without the bound context a field would be missing.
    """
    register(app)
    ok = await app.enqueue(ADD, 1, 2)
    failing = await app.enqueue(FAIL, "on purpose")
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name)
    async with streamq_child(["worker", "tests.apps.slow:app", "--burst"], env) as child:
        code = await child.wait(timeout_s=30)
    assert code == 0, child.output()
    records = child.records()
    assert records, child.output()
    for record in records:
        assert {"event", "level", "timestamp"} <= record.keys(), record
    events = job_events(records)
    assert_job_context(events, app)
    assert outcome_tuples(events) == sorted(expected_outcomes(ok.id, failing.id))
    assert await ok.result(timeout=1) == 3
    with pytest.raises(JobFailed):
        await failing.result(timeout=1)


async def test_capture_logs_sees_bound_job_context(app: App) -> None:
    """``capture_logs`` around an in-process worker sees the same fields as the JSON output.

    The worker's loggers bind queue and worker when they are created, which
    here is before ``capture_logs`` starts (as a fixture-built worker would
    be); the captured dicts must still hold that context, or a user's tests
    of their logging would see less than production does.
    """
    register(app)
    ok = await app.enqueue(ADD, 20, 22)
    failing = await app.enqueue(FAIL, "on purpose")
    worker = Worker(app, burst=True)
    with capture_logs() as logs:
        await worker.run()
    events = job_events(logs)
    assert_job_context(events, app)
    assert outcome_tuples(events) == sorted(expected_outcomes(ok.id, failing.id))
    assert {r["worker"] for r in events} == {worker.consumer}
    levels = {r["event"]: r["log_level"] for r in events}
    assert levels == {"job succeeded": "info", "job retried": "warning", "job failed": "error"}


async def test_log_level_filters_job_events(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    """``configure_logging(level="warning")`` drops info lines and keeps warnings.

    The CLI's ``--log-level`` goes through this call; if the level were
    accepted and ignored, "job succeeded" (info) would still be printed.
    """
    register(app)
    await app.enqueue(ADD, 1, 1)
    failing = await app.enqueue(FAIL, "on purpose")
    configure_logging(json=True, level="warning")
    await Worker(app, burst=True).run()
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    events = job_events(records)
    assert_job_context(events, app)
    assert sorted(r["event"] for r in events) == ["job failed", "job retried"]
    assert {r["job_id"] for r in events} == {failing.id}
    assert {r["level"] for r in records} == {"warning", "error"}, records
