"""The pytest plugin for users' tests (``streamq.testing``, issue 13 point 6).

Two kinds of tests. The helpers (``run_until_idle``, ``running_worker``,
``bind``) run here directly, on this suite's server. The plugin's fixtures run
in users' test modules: pytester writes such a module and runs pytest on it in
this process (the plugin is loaded there through its entry point, as in a
user's project), and ``examples/test_with_streamq.py`` runs in a subprocess.
The users' modules run against this suite's server through
``$STREAMQ_TEST_REDIS_URL``, except where the private server is the point.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import redis

from streamq import App, JobFailed, JobStatus, Settings, current_job
from streamq.embedded import ValkeyServer, ping
from streamq.serializers import JSONSerializer
from streamq.testing import (
    ENV_URL,
    bind,
    delete_prefix,
    run_until_idle,
    running_worker,
    unique_prefix,
)
from tests.conftest import drop_queue, queue_name

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
STRICT_INI = """
[pytest]
addopts = --strict-markers -p no:cacheprovider
filterwarnings =
    error
"""
HEADER = """
import pytest

from streamq import App, JobFailed, JobStatus, current_job

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


def leftover_keys(url: str) -> list[bytes]:
    """Keys any test of the plugin left behind on the server."""
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match="streamq-test-*"))
    finally:
        client.close()


@pytest.fixture
def users_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project: strict pytest settings, no streamq settings in the environment."""
    pytester.makeini(STRICT_INI)
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return pytester


# -- the helpers ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_run_until_idle_runs_retries_without_waiting_out_their_backoff(app: App) -> None:
    """Backoff of up to an hour per retry: only running retries at once can finish."""

    @app.task(name="flaky", max_retries=3, backoff_base=3600, backoff_cap=3600)
    async def flaky() -> int:
        if current_job().attempt < 3:
            raise ConnectionError("not yet")
        return current_job().attempt

    job = await flaky.enqueue()
    await run_until_idle(app)
    assert await job.status() == JobStatus.SUCCEEDED
    assert await job.result() == 3


@pytest.mark.anyio
async def test_run_until_idle_covers_every_partition(redis_url: str) -> None:
    """Jobs, retries and scheduled jobs in partitions 1 and 2 run too, not only
    partition 0's."""
    app = App(queue_name(), settings=Settings(redis_url=redis_url, partitions=3))
    async with app:

        @app.task(name="flaky", max_retries=2, backoff_base=3600, backoff_cap=3600)
        async def flaky(n: int) -> int:
            if current_job().attempt < 2:
                raise ConnectionError("not yet")
            return n

        jobs = [await flaky.enqueue(n) for n in range(6)]
        scheduled = [await flaky.enqueue_in(30, n) for n in range(6, 9)]
        assert {job.partition for job in jobs} == {0, 1, 2}
        await run_until_idle(app, timeout=20)
        assert [await job.result(timeout=5) for job in [*jobs, *scheduled]] == list(range(9))
        for index in range(3):
            await drop_queue(app.partition(index))


@pytest.mark.anyio
async def test_a_job_that_keeps_failing_raises_job_failed_from_result(app: App) -> None:
    @app.task(name="broken", max_retries=1, backoff_base=3600)
    async def broken() -> None:
        raise ValueError("bad input")

    job = await broken.enqueue()
    await run_until_idle(app)
    with pytest.raises(JobFailed) as failed:
        await job.result()
    assert failed.value.error_type == "ValueError"
    assert int((await job.info())["attempts"]) == 2


@pytest.mark.anyio
async def test_scheduled_jobs_run_when_due_within_the_horizon(app: App) -> None:
    """Default horizon 60 s: due in 30 s runs now, in an hour stays; ``inf`` runs all."""

    @app.task(name="remind")
    async def remind(when: str) -> str:
        return when

    soon = await remind.enqueue_in(30, "soon")
    later = await remind.enqueue_in(3600, "later")
    await run_until_idle(app)
    assert await soon.result() == "soon"
    assert await later.status() == JobStatus.SCHEDULED
    await run_until_idle(app, scheduled_within=math.inf)
    assert await later.result() == "later"


@pytest.mark.anyio
async def test_scheduled_within_zero_runs_retries_but_no_future_schedule(app: App) -> None:
    @app.task(name="flaky", max_retries=1, backoff_base=3600)
    async def flaky() -> str:
        if current_job().attempt == 1:
            raise ConnectionError("once")
        return "retried"

    @app.task(name="remind")
    async def remind() -> str:
        return "ran"

    retried = await flaky.enqueue()
    scheduled = await remind.enqueue_in(30)
    await run_until_idle(app, scheduled_within=0)
    assert await retried.result() == "retried"
    assert await scheduled.status() == JobStatus.SCHEDULED
    redis_client = await app.redis()
    await redis_client.delete(app.keys.delayed, app.keys.job(scheduled.id))


@pytest.mark.anyio
async def test_run_until_idle_waits_for_jobs_that_jobs_enqueue(app: App) -> None:
    @app.task(name="child")
    async def child(n: int) -> int:
        return n * 2

    @app.task(name="parent")
    async def parent(n: int) -> str:
        return (await child.enqueue(n)).id

    job = await parent.enqueue(21)
    await run_until_idle(app, concurrency=1)
    assert await app.job(await job.result()).result() == 42


@pytest.mark.anyio
async def test_a_running_worker_says_what_is_left_when_it_times_out(app: App) -> None:
    """A job still running at the deadline: TimeoutError names it; once it ends, idle."""
    started, release = anyio.Event(), anyio.Event()

    @app.task(name="slow")
    async def slow() -> str:
        started.set()
        await release.wait()
        return "done"

    async with running_worker(app) as running:
        job = await slow.enqueue()
        with anyio.fail_after(20):
            await started.wait()
        with pytest.raises(TimeoutError, match="1 delivered and not recorded"):
            await running.run_until_idle(timeout=0.2)
        release.set()
        await running.run_until_idle()
        assert await job.result() == "done"


@pytest.mark.anyio
async def test_bind_points_the_app_itself_at_the_test_server_then_restores_it(
    redis_url: str,
) -> None:
    """Tasks registered on the App enqueue through it; afterwards it is as it was,
    connection included, and a task registered meanwhile is gone."""
    serializer = JSONSerializer()
    settings = Settings(redis_url=redis_url, prefix="users-own")
    user_app = App(queue_name(), settings=settings, serializer=serializer)

    @user_app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    async with user_app:
        own_client = await user_app.redis()
        prefix = unique_prefix()
        try:
            async with bind(user_app, redis_url=redis_url, prefix=prefix) as bound:
                assert bound is user_app
                assert user_app.settings == settings.with_changes(prefix=prefix)
                assert user_app.keys.stream("default").startswith(f"{prefix}:{{")
                assert user_app.serializer is serializer
                assert await user_app.redis() is not own_client

                @user_app.task(name="during")
                async def during() -> None:
                    return None

                job = await add.enqueue(2, 3)
                await run_until_idle(user_app)
                assert await job.result() == 5
                assert await (await user_app.redis()).exists(user_app.keys.job(job.id))
            assert user_app.settings == settings
            assert user_app.keys.stream("default").startswith("users-own:{")
            assert sorted(user_app.tasks) == ["add"]
            assert await user_app.redis() is own_client
            assert not await own_client.exists(f"users-own:{{{user_app.name}}}:job:{job.id}")
        finally:
            delete_prefix(redis_url, prefix)


def test_delete_prefix_deletes_that_prefix_only(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("streamq-test-aaa:{q}:job:1", "x")
        client.set("streamq-test-aaa:{r}:dlq", "x")
        client.set("streamq-test-aaab:{q}:job:1", "x")
        assert delete_prefix(redis_url, "streamq-test-aaa") == 2
        assert client.exists("streamq-test-aaab:{q}:job:1")
        assert delete_prefix(redis_url, "streamq-test-aaab") == 1
    finally:
        client.close()


# -- the plugin in a user's project ---------------------------------------------------


def test_the_plugin_is_installed_as_an_entry_point() -> None:
    """``pip install streamq`` registers it; pytest loads it in every project."""
    plugins = importlib.metadata.entry_points(group="pytest11")
    assert [ep.value for ep in plugins if ep.name == "streamq"] == ["streamq.testing"]


def test_each_test_gets_a_fresh_queue_whose_keys_go_afterwards(
    users_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """Two tests enqueue on the same App and queue name: each sees its own job only."""
    monkeypatch.setenv(ENV_URL, redis_url)
    users_project.makepyfile(
        HEADER
        + """
app = App("orders")


@app.task(name="noop")
async def noop() -> None:
    return None


@pytest.mark.streamq_app(app)
@pytest.mark.parametrize("n", [1, 2])
async def test_sees_only_its_own_job(streamq_app, streamq_prefix, n):
    assert streamq_app is app and app.settings.prefix == streamq_prefix
    job = await noop.enqueue()
    redis = await app.redis()
    assert await redis.xlen(app.keys.stream("default")) == 1
    assert [key async for key in redis.scan_iter(match=app.keys.job_pattern())] == [
        app.keys.job(job.id).encode()
    ]


async def test_a_fresh_app_by_default(streamq_app, streamq_prefix):
    assert streamq_app.name == "test" and streamq_app.settings.prefix == streamq_prefix
    assert streamq_app.tasks == {}


def test_the_module_app_is_itself_again():
    assert app.settings.prefix == "streamq" and app.settings.redis_url is None
    assert sorted(app.tasks) == ["noop"]
"""
    )
    result = users_project.runpytest()
    result.assert_outcomes(passed=4)
    assert leftover_keys(redis_url) == []


def test_run_until_idle_and_the_worker_fixture_in_a_users_test(
    users_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """Retries run (whatever their backoff) and run_until_idle returns; a failed job
    raises JobFailed from result(); the worker fixture serves the test's App."""
    monkeypatch.setenv(ENV_URL, redis_url)
    users_project.makepyfile(
        HEADER
        + """
from streamq.testing import run_until_idle

app = App("payments")
pytestmark = [pytestmark, pytest.mark.streamq_app(app)]


@app.task(name="charge", max_retries=3, backoff_base=3600, backoff_cap=3600)
async def charge(cents: int) -> dict:
    if current_job().attempt < 3:
        raise ConnectionError("gateway timeout")
    return {"cents": cents, "attempt": current_job().attempt}


@app.task(name="refund", max_retries=1)
async def refund(cents: int) -> None:
    raise ValueError(f"cannot refund {cents}")


async def test_retries_run_and_it_returns(streamq_app):
    job = await charge.enqueue(500)
    await run_until_idle(streamq_app)
    assert await job.result() == {"cents": 500, "attempt": 3}


async def test_a_failed_job_raises_from_result(streamq_app):
    job = await refund.enqueue(500)
    await run_until_idle(streamq_app)
    assert await job.status() == JobStatus.FAILED
    with pytest.raises(JobFailed, match="cannot refund 500") as failed:
        await job.result()
    assert failed.value.error_type == "ValueError"


async def test_the_worker_fixture(streamq_worker):
    assert streamq_worker.app is app
    jobs = await charge.enqueue_many([(1,), (2,)])
    await streamq_worker.run_until_idle()
    assert [(await job.result())["cents"] for job in jobs] == [1, 2]
"""
    )
    result = users_project.runpytest()
    result.assert_outcomes(passed=3)
    assert leftover_keys(redis_url) == []


def test_no_server_starts_unless_a_fixture_asks(
    users_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed is not active: tests that use no streamq fixture start nothing."""
    starts: list[object] = []

    def start(self: ValkeyServer, timeout_s: float = 20.0) -> None:
        starts.append(self)
        raise AssertionError("a valkey-server was started")

    monkeypatch.setattr(ValkeyServer, "start", start)
    users_project.makepyfile(
        HEADER
        + """
app = App("unused")


def test_sync(request):
    assert not [name for name in request.fixturenames if name.startswith("streamq")]


@pytest.mark.streamq_app(app)
async def test_async_with_the_marker_only(request):
    assert not [name for name in request.fixturenames if name.startswith("streamq")]
    assert app.settings.prefix == "streamq"
"""
    )
    result = users_project.runpytest()
    result.assert_outcomes(passed=2)
    assert starts == []


def test_the_private_server_serves_the_session_and_stops_with_it(
    users_project: pytest.Pytester,
) -> None:
    """No ``$STREAMQ_TEST_REDIS_URL``: one server for the session, gone after it."""
    users_project.makepyfile(
        HEADER
        + """
from pathlib import Path

from streamq.testing import run_until_idle


@pytest.mark.parametrize("n", [1, 2])
async def test_uses_the_server(streamq_url, streamq_app, n):
    with open(Path(__file__).with_name("urls.txt"), "a") as urls:
        print(streamq_url, file=urls)

    @streamq_app.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    job = await double.enqueue(n)
    await run_until_idle(streamq_app)
    assert await job.result() == 2 * n
"""
    )
    result = users_project.runpytest()
    result.assert_outcomes(passed=2)
    urls = (users_project.path / "urls.txt").read_text().split()
    assert len(urls) == 2 and urls[0] == urls[1]
    assert urls[0].startswith("unix://")
    assert not ping(Path(urls[0].removeprefix("unix://"))), "the server outlived the session"


def test_the_example_test_module_passes(redis_url: str, tmp_path: Path) -> None:
    """examples/test_with_streamq.py, run as a user runs their tests.

    With a user's strict settings (``-c``) rather than this project's: the
    plugin comes from its entry point, whatever this project's addopts say.
    """
    ini = tmp_path / "pytest.ini"
    ini.write_text(STRICT_INI)
    env = dict(os.environ)
    for name in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", "STREAMQ_REDIS_URL"):
        env.pop(name, None)
    env[ENV_URL] = redis_url
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", str(ROOT), "-q"]
        + ["examples/test_with_streamq.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "4 passed" in proc.stdout.splitlines()[-1], proc.stdout
    assert leftover_keys(redis_url) == []
