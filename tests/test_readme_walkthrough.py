"""The README's quickstart, run as written: each command line of its shell blocks.

The Quickstart section promises a walkthrough that works pasted into a shell.
This test reads that section, runs every command line through ``bash -c`` in
the project root (the venv's bin first on PATH, as ``. .venv/bin/activate``
does), starts the "terminal 1" worker in the background, and checks that each
command exits 0. The embedded server lives under the test's ``$STREAMQ_HOME``.
Edit the README and this test follows; break a command and it fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from streamq import embedded
from tests.apps.process import ROOT, valkey_pids_serving

ACTIVATE = ". .venv/bin/activate"
TIMEOUT_S = 120


def quickstart_blocks() -> list[list[str]]:
    """The command lines of each ```sh block in the Quickstart section, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [
        [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]
        for block in blocks
    ]


def shell(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False,
    )  # fmt: skip


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find the server")
def test_the_quickstart_walkthrough_works_as_written() -> None:
    setup, terminal_1, terminal_2, finish = quickstart_blocks()
    assert ACTIVATE in setup and (ROOT / ".venv/bin/activate").is_file()
    assert terminal_1 == ["streamq worker examples.emails:app"]
    home = embedded.data_dir()
    env = dict(os.environ)
    env.pop("STREAMQ_REDIS_URL", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["STREAMQ_EXAMPLE_QUEUE"] = f"readme{uuid.uuid4().hex[:8]}"
    env["PYTHONUNBUFFERED"] = "1"
    for line in setup:
        if line != ACTIVATE:
            proc = shell(line, env)
            assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
    worker = subprocess.Popen(
        ["bash", "-c", f"exec {terminal_1[0]}"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        outputs = {}
        for line in terminal_2:
            proc = shell(line, env)
            assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
            outputs[line.split()[1]] = proc.stdout
        assert "200/200 sent, 0 failed" in outputs["examples/producer.py"]
        assert "send_email" in outputs["replay"]
    finally:
        worker.send_signal(signal.SIGINT)  # Ctrl-C in terminal 1
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    assert valkey_pids_serving(home), "the server should still run until `server stop`"
    for line in finish:
        proc = shell(line, env)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
    assert valkey_pids_serving(home) == []
