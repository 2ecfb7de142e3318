"""streamq on the older servers of its compatibility matrix: Redis 7.0 and Valkey 8.

The session's tests run on the bundled Valkey 9. Here, for each older server
(Debian's redis-server 7.0, and valkey-server 8.0 from bookworm-backports), a
subset of the core, reliability and audit tests runs again in a child pytest
with ``STREAMQ_TEST_SERVER=<server>`` (every server it starts is that one), and
a few direct checks run on a server started for this module. Without the
binary they are NOT RUN, loudly (tests/compat/plugin.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from streamq import App, Settings
from streamq.connection import check_server
from streamq.doctor import Status, run_checks
from streamq.durable import fsync_note
from streamq.embedded import ValkeyServer
from streamq.errors import NotDurable
from tests.compat.plugin import (
    BIN_ENV,
    BINARY_ENV,
    REDIS7,
    SERVER_ENV,
    VALKEY8,
    CompatServer,
    require,
    server_version,
)
from tests.compat.subset import FULL_ENV, ROOT, pytest_args
from tests.conftest import drop_queue, queue_name, running_worker, wait_until
from tests.servers import free_port

MATRIX = pytest.mark.parametrize("compat", [REDIS7, VALKEY8], ids=lambda s: s.key)


@dataclass
class CompatServerProcess(ValkeyServer):
    """A server of the given binary, without persistence (a test server)."""

    binary: Path = Path("/usr/bin/redis-server")

    def command(self) -> list[str]:
        args = super().command()
        return [str(self.binary), *args[1:], "--appendonly", "no", "--save", ""]


@pytest.fixture(scope="module", params=[REDIS7, VALKEY8], ids=lambda s: s.key)
def older(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CompatServer, CompatServerProcess]]:
    compat: CompatServer = request.param
    binary = require(compat)
    directory = tmp_path_factory.mktemp(compat.key)
    server = CompatServerProcess(directory, unix_socket=directory / "redis.sock", binary=binary)
    server.start()
    yield compat, server
    server.stop()


@pytest.mark.anyio
async def test_streamq_accepts_the_older_server_and_says_so(
    older: tuple[CompatServer, CompatServerProcess],
) -> None:
    compat, server = older
    version = await check_server(server.url, Settings())
    assert version is not None and version.product == compat.product, version
    assert version.version.startswith(compat.version_prefix) and version.supported


@pytest.mark.anyio
async def test_a_job_round_trips_on_the_older_server_and_doctor_passes_the_version(
    older: tuple[CompatServer, CompatServerProcess],
) -> None:
    compat, server = older
    app = App(queue_name(), redis_url=server.url)

    @app.task(name="t")
    async def t(n: int) -> int:
        return n * 2

    async with app:
        async with running_worker(app):
            assert await (await t.enqueue(21)).result(timeout=10) == 42
        checks = {c.name: c for c in await run_checks(app)}
        assert checks["version"].status is Status.OK
        assert checks["version"].detail.startswith(f"{compat.product} {compat.version_prefix}")
        await drop_queue(app)


def run_on(compat: CompatServer, args: Sequence[str], limit_s: float) -> None:
    """Run pytest ``args`` in a child pytest whose servers are all ``compat``'s.

    Past ``limit_s`` the child gets SIGINT, so its fixtures still stop the
    servers it started (they run in their own sessions: a SIGKILLed child
    would leave them behind), and only then SIGKILL.
    """
    if os.environ.get(BINARY_ENV):
        pytest.skip(f"this session already runs on {os.environ[BINARY_ENV]}")
    binary = require(compat)
    env = {k: v for k, v in os.environ.items() if k not in (BIN_ENV, BINARY_ENV)}
    env.update({SERVER_ENV: compat.key, "PYTHONPATH": str(ROOT)})
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
        pytest.fail(f"the {compat.name} run took over {limit_s:g} s:\n{output[-8000:]}")
    server = server_version(binary)
    assert child.returncode == 0, f"on {server}:\n{output[-8000:]}"
    assert f"streamq test servers: {server}" in output, output[:2000]
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


@MATRIX
@pytest.mark.timeout(300)
def test_the_core_subset_passes_on_the_older_server(compat: CompatServer) -> None:
    """tests/compat/subset.py's SUBSET (without SLOW): about 35-60 s each on 2 cores."""
    run_on(compat, pytest_args(), limit_s=240)


@MATRIX
@pytest.mark.chaos
@pytest.mark.timeout(900)
def test_the_wider_suite_passes_on_the_older_server(compat: CompatServer) -> None:
    """The FULL run, SLOW included: opt-in, as it takes minutes (the subset runs in CI)."""
    if os.environ.get(FULL_ENV, "") in ("", "0"):
        pytest.skip(f"the full {compat.name} run takes minutes: set {FULL_ENV}=1 to run it")
    run_on(compat, pytest_args(full=True), limit_s=840)


@MATRIX
@pytest.mark.anyio
async def test_durable_enqueues_fall_back_to_wait_alone_on_the_older_server(
    compat: CompatServer, tmp_path: Path
) -> None:
    """``durable=True`` on a master without a usable WAITAOF (Redis 7.0 has no
    such command; here the master's AOF is off too): the enqueue waits for the
    replica with WAIT alone, says why (``fsync_note``), and raises NotDurable,
    the job still queued, once the replica is gone."""
    binary = require(compat)
    master = CompatServerProcess(
        tmp_path / "master", port=free_port(), binary=binary,
        extra_args=["--repl-diskless-sync-delay", "0"],  # sync at once, not after 5 s
    )  # fmt: skip
    master.start()
    replica = CompatServerProcess(
        tmp_path / "replica", port=free_port(), binary=binary,
        extra_args=["--replicaof", "127.0.0.1", str(master.port)],
    )  # fmt: skip
    replica.start()
    try:
        settings = Settings(redis_url=master.url, durable=True, durable_timeout_s=1.0)
        async with App(queue_name(), settings=settings) as app:

            @app.task(name="noop")
            async def noop(n: int) -> None:
                return None

            redis = await app.redis()

            async def replication() -> dict[str, Any]:
                info: dict[str, Any] = await redis.info("replication")
                return info

            async def synced() -> bool:  # online: past its initial sync, acking writes
                replica = (await replication()).get("slave0")
                return isinstance(replica, dict) and replica.get("state") == "online"

            async def gone() -> bool:
                return int((await replication()).get("connected_slaves", 0)) == 0

            await wait_until(synced, 20, "the replica to sync")
            job = await noop.enqueue(1)
            assert "WAITAOF" in fsync_note(app) or "appendonly" in fsync_note(app).lower()
            replica_client = Redis.from_url(replica.url)
            try:
                assert await replica_client.hget(app.keys.job(job.id), "status") == b"queued"
            finally:
                await replica_client.aclose()

            replica.stop()
            await wait_until(gone, 20, "the master to see it gone")
            with pytest.raises(NotDurable) as caught:
                await noop.enqueue(2)
            (job_id,) = caught.value.job_ids
            assert (caught.value.replicas, caught.value.wanted) == (0, 1)
            assert await redis.hget(app.keys.job(job_id), "status") == b"queued"
    finally:
        replica.stop()
        master.stop()
