"""Worker logs: JSON lines off a terminal, and job context on every job event.

An operator greps a worker's log by job id; a log pipeline indexes its JSON
fields. So every job outcome line ("job succeeded", "job retried", "job
failed") must carry job_id, task, queue, attempt and duration_ms, both in a
real worker process (stdout a pipe, so JSON) and as structlog's
``capture_logs`` sees it in-process. Assertions are on parsed dicts.

Used as a library, streamq follows the application's logging: its structlog
configuration if it has one, else the stdlib logger ``streamq``, which is
silent below warning until logging is configured. The CLI's tracebacks never
show frame locals (payloads, URLs with passwords).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture, capture_logs

from streamq import App, JobFailed, Worker, configure_logging
from streamq.logging import get_logger
from tests.apps import secret_payload
from tests.apps.process import python_child, streamq_child
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


# The README's Usage, cut down: an App, a task, a burst worker, no logging set up.
LIBRARY_SCRIPT = """
import os
import sys

import anyio
from streamq import App, JobFailed, Worker

app = App(os.environ["STREAMQ_TEST_QUEUE"])   # URL from $STREAMQ_REDIS_URL


@app.task(name="lib.send_email", max_retries=1, backoff_base=0.01)
async def send_email(to: str, subject: str) -> dict[str, str]:
    if subject == "fail":
        raise ValueError("mailbox full")
    return {"to": to, "status": "sent"}


async def main() -> None:
    async with app:
        job = await send_email.enqueue("ada@example.com", sys.argv[1])
        await Worker(app, burst=True).run()
        try:
            await job.result(timeout=10)
        except JobFailed:
            pass
        with open(sys.argv[2], "w") as out:
            out.write(job.id)

anyio.run(main)
"""


async def run_library_script(
    app: App, redis_url: str, tmp_path: Any, subject: str
) -> tuple[str, list[str], list[str]]:
    """(job id, stdout lines, stderr lines) of the script run as ``python -c``."""
    id_file = tmp_path / "job_id"
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name)
    async with python_child(["-c", LIBRARY_SCRIPT, subject, str(id_file)], env) as child:
        code = await child.wait(timeout_s=30)
    assert code == 0, child.output()
    return id_file.read_text(), child.stdout, child.stderr


async def test_library_use_prints_nothing(app: App, redis_url: str, tmp_path: Any) -> None:
    """The README's Usage in a script prints nothing: no line per job, none per worker.

    Without logging configured, Python's convention for a library applies:
    its logger ("streamq") stays silent below warning. With structlog's
    defaults the worker printed "worker started", "job succeeded" and
    "worker stopped" lines to stdout.
    """
    _, out, err = await run_library_script(app, redis_url, tmp_path, "hi")
    assert (out, err) == ([], [])


async def test_library_use_shows_only_warnings_and_errors_on_stderr(
    app: App, redis_url: str, tmp_path: Any
) -> None:
    """Unconfigured, a job's retry (warning) and failure (error) still reach stderr.

    That is stdlib logging's last-resort handler: problems are not silently
    lost, while info lines (a job succeeded, the worker started) stay quiet.
    Each line names the event and carries the job's id.
    """
    job_id, out, err = await run_library_script(app, redis_url, tmp_path, "fail")
    assert out == []
    assert [line.split(" ", 2)[:2] for line in err] == [["job", "retried"], ["job", "failed"]], err
    for line in err:
        assert f"job_id={job_id}" in line and "mailbox full" in line, line


async def test_stdlib_logging_sees_job_events_when_structlog_is_not_configured(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """An application that configures only stdlib logging gets streamq's events.

    They come from the ``streamq`` logger at the matching stdlib level, and
    the message carries the job's context (``job_id=...``), so a plain
    ``logging.basicConfig(level="INFO")`` shows which job did what.
    """
    register(app)
    ok = await app.enqueue(ADD, 1, 2)
    failing = await app.enqueue(FAIL, "on purpose")
    caplog.set_level(logging.INFO, logger="streamq")
    await Worker(app, burst=True).run()
    records = [
        (r, event)
        for r in caplog.records
        for event in JOB_EVENTS
        if r.name == "streamq" and r.getMessage().startswith(f"{event} ")
    ]
    # The record points at streamq's code that logged, for %(module)s and %(lineno)d.
    assert {r.module for r, _ in records} == {"outcome"}
    seen = [(r.levelname, event, r.getMessage()) for r, event in records]
    assert sorted((level, event) for level, event, _ in seen) == [
        ("ERROR", "job failed"),
        ("INFO", "job succeeded"),
        ("WARNING", "job retried"),
    ]
    for _, event, message in seen:
        job_id = ok.id if event == "job succeeded" else failing.id
        assert f"job_id={job_id}" in message
        assert f"queue={app.name}" in message and "attempt=" in message, message


def test_stdlib_logging_gets_the_traceback_of_a_logged_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``log.exception`` hands the exception to stdlib logging, whose formatter shows no locals."""
    caplog.set_level(logging.INFO, logger="streamq")
    try:
        _connect(SECRET)
    except ConnectionError:
        get_logger(queue="q").exception("connect failed", attempt=2)
    (record,) = [r for r in caplog.records if r.name == "streamq"]
    assert (record.levelname, record.getMessage()) == ("ERROR", "connect failed queue=q attempt=2")
    assert record.exc_info is not None and record.exc_info[0] is ConnectionError
    assert record.funcName == "test_stdlib_logging_gets_the_traceback_of_a_logged_exception"
    assert SECRET not in caplog.text


async def test_structlog_configured_after_the_worker_is_built_gets_its_events(app: App) -> None:
    """An application that configures structlog sees streamq's events in its own pipeline.

    Here the configuration comes after the Worker (and its loggers) exist, as
    when an application builds its worker before its entry point sets up
    logging. Loggers bound to the configuration of their creation would
    print through structlog's defaults instead.
    """
    register(app)
    ok = await app.enqueue(ADD, 2, 3)
    worker = Worker(app, burst=True)
    captured = LogCapture()
    structlog.configure(processors=[captured])
    await worker.run()
    events = job_events(captured.entries)
    assert_job_context(events, app)
    assert [(r["event"], r["job_id"]) for r in events] == [("job succeeded", ok.id)]
    # The worker's own logger, bound in Worker(): its lines must come here too.
    (stopped,) = [r for r in captured.entries if r["event"] == "worker stopped"]
    assert stopped["worker"] == worker.consumer


SECRET = "hunter2-7f3a"


def _connect(password: str) -> None:
    url = f"redis://:{password}@db.internal:6379"
    raise ConnectionError(f"cannot connect to db.internal ({len(url)} chars)")


@pytest.mark.parametrize("mode", ["json", "console", "terminal"])
def test_cli_tracebacks_never_show_frame_locals(
    mode: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception logged under ``configure_logging`` shows its traceback, not its locals.

    structlog's ``dict_tracebacks`` (JSON) and its Rich console formatter
    render every frame's local variables by default: a payload or a URL
    with its password would go to the log. The traceback itself (type,
    message, frames) must still be there.
    """
    if mode == "terminal":
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    configure_logging(json=mode == "json", level="info")
    try:
        _connect(SECRET)
    except ConnectionError:
        get_logger(queue="q").exception("connect failed")
    out = capsys.readouterr().out
    assert "connect failed" in out
    assert "ConnectionError" in out and "cannot connect to db.internal" in out
    assert "_connect" in out, "the traceback's frames are missing"
    assert SECRET not in out


async def test_worker_process_log_of_a_bug_shows_no_payload_or_locals(
    app: App, redis_url: str
) -> None:
    """A job whose decoding hits a bug is logged with a traceback free of secrets.

    The worker logs "message not processed; it stays pending" with the
    exception. The frames hold the job's payload (its argument is a
    password) and a local secret; the JSON log line keeps the traceback and
    leaves both out, on stdout and stderr.
    """
    secret_payload.register(app)
    await app.enqueue(secret_payload.TASK, secret_payload.ARGUMENT_SECRET)
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name)
    args = ["worker", "tests.apps.secret_payload:app", "--no-janitor"]
    async with streamq_child(args, env) as child:
        await child.wait_for_line(
            lambda line: "message not processed" in line, 30, "logging the bug"
        )
        child.signal(signal.SIGTERM)
        code = await child.wait(timeout_s=30)
    assert code == 0, child.output()
    (record,) = [r for r in child.records() if r["event"].startswith("message not processed")]
    assert "LookupError" in json.dumps(record["exception"]), record
    output = child.output()
    assert secret_payload.ARGUMENT_SECRET not in output
    assert secret_payload.LOCAL_SECRET not in output


def test_enabled_for_follows_the_configuration_in_force(caplog: pytest.LogCaptureFixture) -> None:
    """The outcome writer asks once per batch whether "job succeeded" (info) would be
    written, and skips building lines that would be dropped: the answer must follow
    structlog's level filter, a later reconfiguration, and stdlib's level when
    structlog is not configured (else info lines were lost, or built for nothing)."""
    log = get_logger(queue="q")
    caplog.set_level(logging.WARNING, logger="streamq")
    assert not log.enabled_for(logging.INFO) and log.enabled_for(logging.WARNING)
    caplog.set_level(logging.INFO, logger="streamq")
    assert log.enabled_for(logging.INFO)
    configure_logging(json=True, level="warning")
    assert not log.enabled_for(logging.INFO) and log.enabled_for(logging.ERROR)
    configure_logging(json=True, level="info")
    assert log.enabled_for(logging.INFO) and not log.enabled_for(logging.DEBUG)
    with capture_logs():
        assert log.enabled_for(logging.INFO)
