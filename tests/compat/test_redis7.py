"""streamq on Redis 7.0 (Debian's redis-server), the oldest server it accepts.

The session's tests run on the bundled Valkey 9. Here a subset of the core,
reliability and audit tests runs again in a child pytest with
``STREAMQ_TEST_SERVER=redis7`` (every server it starts is Redis 7.0), and a
few direct checks run on a Redis 7.0 started for this module. Without
``/usr/bin/redis-server`` they are NOT RUN, loudly (tests/compat/plugin.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamq import App, Settings
from streamq.connection import check_server
from streamq.doctor import Status, run_checks
from streamq.embedded import ValkeyServer
from tests.compat.plugin import BIN_ENV, BINARY_ENV, SERVER_ENV, require_redis7, server_version
from tests.compat.subset import FULL_ENV, ROOT, pytest_args
from tests.conftest import drop_queue, queue_name, running_worker


@dataclass
class Redis7Server(ValkeyServer):
    """A redis-server of the given binary, without persistence (a test server)."""

    binary: Path = Path("/usr/bin/redis-server")

    def command(self) -> list[str]:
        args = super().command()
        return [str(self.binary), *args[1:], "--appendonly", "no", "--save", ""]


@pytest.fixture(scope="module")
def redis7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis7Server]:
    binary = require_redis7()
    directory = tmp_path_factory.mktemp("redis7")
    server = Redis7Server(directory, unix_socket=directory / "redis.sock", binary=binary)
    server.start()
    yield server
    server.stop()


@pytest.mark.anyio
async def test_streamq_accepts_redis_7_0_and_says_so(redis7: Redis7Server) -> None:
    version = await check_server(redis7.url, Settings())
    assert version is not None and version.product == "Redis", version
    assert version.version.startswith("7.0.") and version.supported


@pytest.mark.anyio
async def test_a_job_round_trips_on_redis_7_0_and_doctor_passes_the_version(
    redis7: Redis7Server,
) -> None:
    app = App(queue_name(), redis_url=redis7.url)

    @app.task(name="t")
    async def t(n: int) -> int:
        return n * 2

    async with app:
        async with running_worker(app):
            assert await (await t.enqueue(21)).result(timeout=10) == 42
        checks = {c.name: c for c in await run_checks(app)}
        assert checks["version"].status is Status.OK
        assert checks["version"].detail.startswith("Redis 7.0.")
        await drop_queue(app)


def run_on_redis7(args: Sequence[str], limit_s: float) -> None:
    """Run pytest ``args`` in a child pytest whose servers are all Redis 7.0.

    Past ``limit_s`` the child gets SIGINT, so its fixtures still stop the
    servers it started (they run in their own sessions: a SIGKILLed child
    would leave them behind), and only then SIGKILL.
    """
    if os.environ.get(BINARY_ENV):
        pytest.skip(f"this session already runs on {os.environ[BINARY_ENV]}")
    binary = require_redis7()
    env = {k: v for k, v in os.environ.items() if k not in (BIN_ENV, BINARY_ENV)}
    env.update({SERVER_ENV: "redis7", "PYTHONPATH": str(ROOT)})
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output, _ = child.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)
        try:
            output, _ = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            output, _ = child.communicate()
        pytest.fail(f"the Redis 7.0 run took over {limit_s:g} s:\n{output[-8000:]}")
    server = server_version(binary)
    assert child.returncode == 0, f"on {server}:\n{output[-8000:]}"
    assert f"streamq test servers: {server}" in output, output[:2000]
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


@pytest.mark.timeout(300)
def test_the_core_subset_passes_on_redis_7_0() -> None:
    """tests/compat/subset.py's SUBSET (without SLOW) on Redis 7.0: about 60 s on 2 cores."""
    run_on_redis7(pytest_args(), limit_s=240)


@pytest.mark.chaos
@pytest.mark.timeout(900)
def test_the_wider_suite_passes_on_redis_7_0() -> None:
    """The FULL run, SLOW included: opt-in, as it takes minutes (the subset runs in CI)."""
    if os.environ.get(FULL_ENV, "") in ("", "0"):
        pytest.skip(f"the full Redis 7.0 run takes minutes: set {FULL_ENV}=1 to run it")
    run_on_redis7(pytest_args(full=True), limit_s=840)
