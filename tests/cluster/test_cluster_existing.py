"""Existing test files, unchanged, against the cluster (``STREAMQ_TEST_CLUSTER=1``).

With that variable the ``redis_url`` fixture of tests/conftest.py names the
session's local cluster (``redis+cluster://``), so every App a test builds,
every CLI child it starts and the key-leak check run there. This runs a
subset covering the core, reliability, audit and CLI paths in a child
pytest (its own cluster); more files can be run by hand the same way:

    STREAMQ_TEST_CLUSTER=1 pytest tests/test_worker.py tests/test_dashboard.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBSET = [
    "tests/test_smoke.py",  # enqueue, run, result
    "tests/test_retry.py",  # retries through the delayed set
    "tests/test_dlq.py",  # the DLQ, requeue, purge, and the `streamq dlq` CLI
    "tests/test_chains.py",  # parents and children
    "tests/test_lost_jobs.py",  # the janitor's SCAN for job hashes whose message is gone
]


@pytest.mark.chaos  # about 30 s on 2 cores
def test_the_subset_passes_on_the_cluster() -> None:
    env = dict(os.environ, STREAMQ_TEST_CLUSTER="1", PYTHONPATH=str(ROOT))
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *SUBSET],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    tail = "\n".join(done.stdout.splitlines()[-30:])
    assert done.returncode == 0, f"{tail}\n{done.stderr[-2000:]}"
    assert " passed" in tail and "skipped" not in tail.split("\n")[-1], tail
