"""Shared fixtures: real valkey-servers started by the tests, one queue per test.

Nothing here mocks Redis. One server runs for the session (from the same
binary the embedded default uses); each test gets its own queue name, so no
test flushes another's keys. After each test, a key-leak check fails it if it
left a key of its queue that should have had a TTL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from streamq import App, Worker
from streamq.embedded import Embedded, ValkeyServer
from streamq.keys import GROUP
from tests.cluster.server import ValkeyCluster, valkey_cluster

# Browser tests: run, or reported as NOT RUN loudly (tests/browser/plugin.py).
# The server binary of the session, Redis 7 tests NOT RUN loudly (tests/compat/plugin.py).
# The chaos suite's figures in the terminal summary (tests/chaos/plugin.py).
pytest_plugins = ("tests.browser.plugin", "tests.compat.plugin", "tests.chaos.plugin")

# Keys that legitimately live without a TTL (the audit history and queues).
PERMANENT_KINDS = {"stream", "events", "dlq", "delayed", "cron", "partitions"}
NOT_FINAL = {b"scheduled", b"queued", b"running", b"retrying"}


@pytest.fixture
def anyio_backend() -> str:
    # redis-py's client is asyncio-only.
    return "asyncio"


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    directory = tmp_path_factory.mktemp("valkey")
    server = ValkeyServer(directory, unix_socket=directory / "valkey.sock")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """The session server; with ``STREAMQ_TEST_CLUSTER=1``, the local cluster's URL."""
    if os.environ.get("STREAMQ_TEST_CLUSTER") == "1":
        return str(request.getfixturevalue("cluster_url"))
    server: ValkeyServer = request.getfixturevalue("valkey")
    return server.url


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test touches the developer's real embedded server or its data dir.

    The embedded server is detached by design (it outlives whoever started
    it), so whatever a test left running under its home is stopped after it.
    """
    home = tmp_path / "home"
    monkeypatch.setenv("STREAMQ_HOME", str(home))
    monkeypatch.delenv("STREAMQ_REDIS_URL", raising=False)
    yield
    Embedded(home).stop()


def queue_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def app(redis_url: str) -> AsyncIterator[App]:
    application = App(queue_name(), redis_url=redis_url)
    async with application:
        yield application
        await assert_no_key_leak(application)


async def assert_no_key_leak(application: App) -> None:
    """No key of the queue lives forever by mistake.

    Keys without a TTL are allowed only for the permanent kinds and for job
    hashes that are not final *and* whose message still exists (pending,
    unread, or in the delayed set), as the janitor's lost-job check decides
    (``scripts/lost.lua``, without writing): a non-final hash whose message
    is gone would never get a TTL, and counts as a leak.
    """
    redis = await application.node_redis()  # SCAN: the node holding the queue
    leaked = []
    live_candidates: list[tuple[bytes, bytes]] = []
    base = application.keys.job("").encode()
    async for key in redis.scan_iter(match=application.keys.pattern(), count=1000):
        if await redis.pttl(key) != -1:
            continue
        kind = key.decode().split(":")[2]
        if kind in PERMANENT_KINDS:
            continue
        if kind == "unique":
            # Held without a TTL only while its job lives (the sweep expires it after).
            holder = await redis.get(key)
            if holder and await redis.hget(application.keys.job(holder.decode()), "status") in (
                NOT_FINAL
            ):
                continue
        if kind == "job" and await redis.hget(key, "status") in NOT_FINAL:
            live_candidates.append((key[len(base) :], key))
            continue
        leaked.append(key)
    assert not leaked, f"keys without a TTL left behind: {leaked}"
    scripts = await application.scripts()
    for i in range(0, len(live_candidates), 100):
        lost = await scripts.lost(
            events=application.keys.events, delayed=application.keys.delayed,
            streams=application.streams, group=GROUP,
            result_ttl_ms=1, safe_age_ms=0, jobs=live_candidates[i : i + 100], mark=False,
        )  # fmt: skip
        assert not lost, f"non-final job hashes whose message is gone (no TTL, ever): {lost}"


async def bound_lost_jobs(application: App) -> list[str]:
    """The janitor's lost-job duty (``Janitor.bound_lost_jobs``) with no safe age:
    mark every non-final job hash whose message is gone; returns their job ids.

    For tests that lose a message on purpose: they show the orphan is bounded.
    """
    redis = await application.node_redis()
    base = application.keys.job("").encode()
    jobs = [
        (key[len(base) :], key)
        async for key in redis.scan_iter(match=application.keys.job_pattern(), count=1000)
    ]
    scripts = await application.scripts()
    marked: list[bytes] = []
    for i in range(0, len(jobs), 100):
        marked += await scripts.lost(
            events=application.keys.events, delayed=application.keys.delayed,
            streams=application.streams, group=GROUP,
            result_ttl_ms=int(application.settings.result_ttl_s * 1000), safe_age_ms=0,
            jobs=jobs[i : i + 100],
        )  # fmt: skip
    return [job_id.decode() for job_id in marked]


async def drop_queue(application: App) -> None:
    """Delete every key of the queue (tests that build their own App clean up with this)."""
    redis = await application.node_redis()
    async for key in redis.scan_iter(match=application.keys.pattern(), count=1000):
        await redis.delete(key)


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    description: str = "condition",
) -> None:
    """Poll a condition until it holds; fail with the description after ``timeout`` s."""
    with anyio.move_on_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.01)
    pytest.fail(f"timed out after {timeout} s waiting for {description}")


@asynccontextmanager
async def running_worker(application: App, **options: object) -> AsyncIterator[Worker]:
    """A worker running in the background for the body of the ``async with``."""
    worker = Worker(application, **options)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


def subprocess_env(url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"STREAMQ_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}, **extra)
    return env


@pytest.fixture(scope="session")
def valkey_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """A local 3-master Valkey cluster (``tests/cluster/server.py``), for the session."""
    with valkey_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


@pytest.fixture(scope="session")
def cluster_url(valkey_cluster_nodes: ValkeyCluster) -> str:
    """``redis+cluster://`` naming one node of the session's cluster."""
    return valkey_cluster_nodes.url
