"""The files in examples/ run as a user would run them, and print what they promise.

Each example runs in a subprocess against the session's valkey-server (or, for
one test, the embedded default), on a fresh queue named by
``$STREAMQ_EXAMPLE_QUEUE``, so a run never sees another test's jobs. Each one
checks its own outcome and exits 1 when what it demonstrates did not happen;
these tests also pin the lines a reader is told to expect. The web app runs
in this process instead, through an ASGI transport: no port is opened.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from streamq.embedded import ping, socket_path
from tests.conftest import assert_no_key_leak, queue_name, running_worker

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60


def run(
    args: list[str], redis_url: str | None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("STREAMQ_REDIS_URL", None)
    if redis_url is not None:
        env["STREAMQ_REDIS_URL"] = redis_url
    if home is not None:
        env["STREAMQ_HOME"] = str(home)
    env["STREAMQ_EXAMPLE_QUEUE"] = f"ex{uuid.uuid4().hex[:10]}"
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def run_example(
    name: str, redis_url: str | None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # -W error: an example that warns is as broken as a test that does.
    return run([sys.executable, "-W", "error", f"examples/{name}"], redis_url, home)


def assert_clean_exit(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr


QUICKSTART_LINES = [
    "enqueued 5 jobs; first status: queued",
    "send_email -> {'to': 'ada@example.com', 'subject': 'Welcome!', 'status': 'sent'}",
    "send_email -> {'to': 'bob@example.com', 'subject': 'Your weekly digest', 'status': 'sent'}",
    "resize -> cat.128w.png",
    "resize -> dog.64w.jpg",
    "resize -> owl.128w.gif",
]


def test_quickstart_runs_its_jobs_and_prints_results(redis_url: str) -> None:
    """Async and sync handlers run in one burst worker; results come back by job handle."""
    proc = run_example("quickstart.py", redis_url)
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    assert lines[: len(QUICKSTART_LINES)] == QUICKSTART_LINES
    assert lines[-1].startswith("job ")
    assert lines[-1].endswith(" is succeeded")


def test_quickstart_on_the_embedded_server(tmp_path: Path) -> None:
    """With no URL the example starts the embedded server, which outlives it for the next process.

    The autouse ``_isolated_home`` fixture (same home) stops it afterwards.
    """
    home = tmp_path / "home"
    proc = run_example("quickstart.py", None, home)
    assert_clean_exit(proc)
    assert proc.stdout.splitlines()[: len(QUICKSTART_LINES)] == QUICKSTART_LINES
    assert (home / "appendonlydir").is_dir(), "the embedded server writes its AOF in the data dir"
    assert ping(socket_path(home)), "the server went away with the process that started it"


def test_priorities_run_highest_first(redis_url: str) -> None:
    """Jobs enqueued low, default, high run high, default, low with one worker slot."""
    proc = run_example("priorities.py", redis_url)
    assert_clean_exit(proc)
    assert "ran: high-1 high-2 default-1 default-2 low-1 low-2" in proc.stdout.splitlines()
    assert proc.stdout.splitlines()[-1] == "high ran first"


def test_quickstart_app_loads_in_the_worker_command(redis_url: str) -> None:
    """``streamq worker examples.quickstart:app`` finds the app and its tasks (burst: exits)."""
    proc = run(
        [
            str(Path(sys.executable).parent / "streamq"),
            "worker",
            "examples.quickstart:app",
            "--concurrency",
            "50",
            "--burst",
        ],
        redis_url,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    # Not a terminal, so the logs are JSON lines.
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    started = next(e for e in events if e["event"] == "worker started")
    assert started["tasks"] == ["resize", "send_email"]
    assert started["concurrency"] == 50
    assert events[-1]["event"] == "worker stopped"


def test_emails_run_concurrently(redis_url: str) -> None:
    """I/O-bound async handlers overlap: one worker sends the batch several at once."""
    proc = run_example("emails.py", redis_url)
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "enqueued 20 welcome emails and 1 digest"
    assert lines[1].startswith("first: user0@example.com -> sent <")
    assert lines[2] == "digest -> {'to': 'ops@example.com', 'items': 2, 'status': 'sent'}"
    assert re.fullmatch(r"sent 20 emails in [\d.]+ s, up to \d+ at once", lines[3]), lines[3]


def test_cpu_bound_sync_handlers_return_correct_results(redis_url: str) -> None:
    """Sync handlers run in worker threads and their results come back intact."""
    proc = run_example("cpu_bound.py", redis_url)
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    assert lines[:3] == [
        "primes below 20000: 2262",
        "primes below 40000: 4203",
        "primes below 60000: 6057",
    ]
    assert lines[-1] == "every result checks out"


def test_flaky_retries(redis_url: str) -> None:
    """A flaky handler succeeds on attempt 3; retry_on and max_retries end the others in the DLQ."""
    proc = run_example("flaky_retries.py", redis_url)
    assert_clean_exit(proc)
    assert proc.stdout.splitlines() == [
        "fetch_rates -> {'currency_eur': 0.92, 'attempt': 3}",
        "post_webhook -> 200 after a Retry(delay=0.2)",
        "parse_invoice failed after 1 attempt(s): ValueError",
        "sync_crm failed after 3 attempt(s): ConnectionRefusedError",
        "in the DLQ: parse_invoice, sync_crm",
    ]


def test_scheduled_jobs_run_when_due(redis_url: str) -> None:
    """enqueue_in / enqueue_at jobs wait as 'scheduled' and start after, never before, due."""
    proc = run_example("scheduled.py", redis_url)
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "enqueued 2 reminders; status now: scheduled, scheduled"
    for line, to in zip(lines[1:3], ("ada", "bob"), strict=True):
        assert re.fullmatch(rf"reminded {to}@example.com: succeeded, [\d.]+ s after due", line)
    assert lines[-1] == "both ran on time"


def test_dlq_requeue(redis_url: str) -> None:
    """A job that failed for good waits in the DLQ; requeued after the fix, it succeeds."""
    proc = run_example("dlq_requeue.py", redis_url)
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    assert lines[1].endswith(" -> failed: KeyError: 'EUR'")
    assert re.fullmatch(r"DLQ \d+-\d+: charge_card 'failed: KeyError', attempts: 1", lines[3])
    assert lines[4:] == [
        "requeued 1; status now: queued",
        "after the fix: [{'order': 'A-2', 'charged_usd': 16.2}]",
        "no dead letter of this run is left",
    ]


def test_audit_replay(redis_url: str) -> None:
    """The history tells a retried job's story, lists failures, and re-drives them."""
    proc = run_example("audit_replay.py", redis_url)
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    failed = json.loads(next(line for line in lines if line.startswith("{")))
    assert (failed["kind"], failed["task"], failed["error_type"]) == (
        "failed",
        "refund",
        "PermissionError",
    )
    assert "re-driven 1: [{'customer': 'bob', 'refunded': 12.5}]" in lines
    assert lines[-1] == "the history holds every step"


def test_middleware_timing(redis_url: str) -> None:
    """The lifespan's client is shared by both jobs and closed after the last outcome; a
    producer hook's tenant header reaches the timing lines and the error report."""
    proc = run_example("middleware_timing.py", redis_url)
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "lifespan: rates client opened"
    timings = [json.loads(line) for line in lines[1:3]]
    assert [(t["task"], t["tenant"], t["attempt"], t["outcome"]) for t in timings] == [
        ("fetch_price", "acme", 1, "ok"),
        ("fetch_price", "globex", 1, "error:KeyError"),
    ]
    assert all(isinstance(t["ms"], float) and len(t["job_id"]) == 32 for t in timings)
    assert lines[3:] == [
        "lifespan: rates client closed after 2 requests",
        "acme: 100 EUR -> 92.0",
        "globex: failed with KeyError",
        "reported KeyError: 'XXX' tags={'task': 'fetch_price', 'attempt': '1', 'tenant': 'globex'}",
    ]


def test_producer_with_its_own_worker(redis_url: str) -> None:
    """compose.yaml's producer, run alone with --with-worker (test_compose runs it with the
    worker service's command)."""
    proc = run(
        [sys.executable, "-W", "error", "examples/producer.py", "--jobs", "30", "--with-worker"],
        redis_url,
    )
    assert_clean_exit(proc)
    assert re.fullmatch(r"30/30 sent, 0 failed, in [\d.]+ s", proc.stdout.splitlines()[-1])


def test_producer_without_a_worker_says_it_waits_for_one(redis_url: str) -> None:
    """With no worker on the queue, the producer says what it waits for and how to start one.

    Before, it sat silent until its timeout (120 s by default). It still
    exits 1 when the batch does not finish in time.
    """
    proc = run(
        [sys.executable, "-W", "error", "examples/producer.py", "--jobs", "3", "--timeout", "2"],
        redis_url,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "no worker is reading queue" in out, out
    assert "streamq worker examples.emails:app" in out, out
    assert "0/3 sent, 0 failed" in out.splitlines()[-1], out
    # The jobs stay queued for the worker that comes later.
    assert "are still queued" in out, out


@pytest.fixture
def web_example(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/web_app.py imported afresh, on a fresh queue with room for 2 pending jobs."""
    monkeypatch.setenv("STREAMQ_REDIS_URL", redis_url)
    monkeypatch.setenv("STREAMQ_EXAMPLE_QUEUE", queue_name())
    monkeypatch.setenv("STREAMQ_EXAMPLE_MAX_PENDING", "2")
    spec = importlib.util.spec_from_file_location(
        f"web_app_{uuid.uuid4().hex}", ROOT / "examples" / "web_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
async def test_web_app_enqueues_and_awaits_results(web_example: ModuleType) -> None:
    """POST /jobs enqueues (503 once max_pending jobs wait, 422 for bad arguments);
    GET /jobs/{id}?wait= returns the result once an in-process worker ran the job."""
    api, app = web_example.api, web_example.app
    # httpx's ASGITransport sends no lifespan events: run the app's lifespan here.
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://web") as client,
    ):
        first = await client.post("/jobs", json={"customer": "acme", "days": 7})
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        assert first.headers["location"] == f"/jobs/{job_id}"
        assert (await client.post("/jobs", json={"customer": "globex"})).status_code == 202
        full = await client.post("/jobs", json={"customer": "initech"})
        assert full.status_code == 503, full.text
        assert full.headers["retry-after"] == "5"
        bad = await client.post("/jobs", json={"customer": "acme", "weeks": 2})
        assert bad.status_code == 422
        assert "weeks" in bad.json()["error"]
        assert (await client.post("/jobs", content=b"not json")).status_code == 400

        queued = await client.get(f"/jobs/{job_id}")
        assert queued.json() == {"id": job_id, "status": "queued"}
        async with running_worker(app):
            done = await client.get(f"/jobs/{job_id}", params={"wait": 10})
        assert done.status_code == 200
        assert done.json() == {
            "id": job_id,
            "status": "succeeded",
            "result": {"customer": "acme", "days": 7, "orders": 21},
        }
        assert (await client.get("/jobs/no-such-job")).status_code == 404
        assert (await client.get(f"/jobs/{job_id}", params={"wait": "x"})).status_code == 400
        await assert_no_key_leak(app)


@pytest.mark.anyio
async def test_web_app_with_worker_runs_jobs_in_its_own_process(web_example: ModuleType) -> None:
    """``--with-worker``: the lifespan also runs a worker, which stops on shutdown."""
    api = web_example.api
    api.state.with_worker = True
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://web") as client,
    ):
        job_id = (await client.post("/jobs", json={"customer": "acme"})).json()["id"]
        done = await client.get(f"/jobs/{job_id}", params={"wait": 10})
        assert done.json()["result"] == {"customer": "acme", "days": 30, "orders": 90}


def test_web_app_serves_on_loopback_only(
    web_example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python examples/web_app.py`` binds 127.0.0.1 (uvicorn.run is replaced: no port opens)."""
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(web_example.uvicorn, "run", lambda app, **kw: calls.append(kw))
    web_example.main(["--port", "8123"])
    assert calls == [{"host": "127.0.0.1", "port": 8123}]
