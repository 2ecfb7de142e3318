"""The files in examples/ run as a user would run them, and print what they promise.

Each example runs in a subprocess against the session's valkey-server (or, for
one test, the embedded default), on a fresh queue named by
``$STREAMQ_EXAMPLE_QUEUE``, so a run never sees another test's jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from streamq.embedded import ping, socket_path

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
    """With no URL the example starts the embedded server, and stops it when it exits."""
    home = tmp_path / "home"
    proc = run_example("quickstart.py", None, home)
    assert_clean_exit(proc)
    assert proc.stdout.splitlines()[: len(QUICKSTART_LINES)] == QUICKSTART_LINES
    assert (home / "appendonlydir").is_dir(), "the embedded server writes its AOF in the data dir"
    assert not ping(socket_path(home)), "the owning process left its server running"


def test_priorities_run_highest_first(redis_url: str) -> None:
    """Jobs enqueued low, default, high run high, default, low with one worker slot."""
    proc = run_example("priorities.py", redis_url)
    assert_clean_exit(proc)
    assert "ran: high-1 high-2 default-1 default-2 low-1 low-2" in proc.stdout.splitlines()
    assert proc.stdout.splitlines()[-1] == "high ran first"


def test_quickstart_app_loads_in_the_worker_command(redis_url: str) -> None:
    """The command compose.yaml runs finds the app and its tasks (burst: exits when idle)."""
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
