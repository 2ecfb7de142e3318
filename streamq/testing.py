"""Testing your jobs: a pytest plugin, and helpers that work without it.

Installed with streamq and registered as the pytest plugin ``streamq`` (an
entry point), it adds fixtures and starts nothing until a test asks for one of
them: no autouse fixture, no server for a test suite that never uses it
(``-p no:streamq`` turns it off entirely). Every fixture name starts with
``streamq_``, so none shadows a fixture of your own.

Fixtures:

``streamq_url`` (session)
    The URL of a private valkey-server started on first use from the binary
    streamq bundles (the embedded default's, see ``streamq.embedded``), in a
    temporary directory, on a unix socket, with persistence off; stopped at
    the end of the session. With ``$STREAMQ_TEST_REDIS_URL`` set, that server
    is used instead and nothing is started: streamq never flushes it, and
    only deletes each test's own keys.
``streamq_prefix``
    A key prefix of the test's own (``streamq-test-<hex>``): a fresh queue per
    test. Every key under it is deleted after the test.
``streamq_bind``
    A function ``bind(app) -> app`` that points an App at the test server and
    the test's prefix for the rest of the test, then puts it back. See
    ``bind`` for why this rebinds your App in place instead of copying it.
``streamq_app``
    The App under test, bound: the one named by the closest
    ``@pytest.mark.streamq_app(app)`` marker (on the test, its class or its
    module's ``pytestmark``), else a fresh ``App("test")`` for tasks the test
    defines itself.
``streamq_worker``
    A ``RunningWorker`` serving ``streamq_app`` in the background for the
    whole test; ``await streamq_worker.run_until_idle()`` returns once every
    job has run.

Without a background worker, ``await run_until_idle(app)`` starts one, runs
the queue until it is idle, and stops it; ``async with running_worker(app)``
keeps one running for a block.

When is a queue idle (``run_until_idle``)? When no job is waiting in a
stream, none is delivered and not yet recorded (at this worker or any other),
and the delayed set holds nothing it would run; chained jobs whose parents
are final are released at once (``streamq.chains``). Waiting jobs in the delayed
set are run *now*, without waiting for their time: every retry, whatever its
backoff (a test wants the retry policy's outcome, not its delays), and every
job scheduled (``enqueue_in``, ``enqueue_at``) to become due within
``scheduled_within`` seconds (default 60, a burst worker's horizon). Jobs
scheduled further out stay scheduled, and the queue counts as idle with them
there; pass ``scheduled_within=math.inf`` to run them too, or 0 to run only
retries and jobs already due. No sleeps: once it returns, ``await
job.result()`` answers at once. It gives up after ``timeout`` seconds (30 by
default) with a ``TimeoutError`` that says what was left.

Async tests run under anyio's pytest plugin (installed with anyio, a streamq
dependency): mark them ``@pytest.mark.anyio`` and define an ``anyio_backend``
fixture that returns ``"asyncio"`` (redis-py's client is asyncio only).
``streamq_bind``, ``streamq_app`` and ``streamq_worker`` are async fixtures
run by that plugin. With pytest-asyncio instead, use the sync fixtures
(``streamq_url``, ``streamq_prefix``) and the helpers here in your own async
fixture or test: ``async with bind(app, redis_url=..., prefix=...):`` and
``await run_until_idle(app)``.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from redis.exceptions import ResponseError

from streamq import sentinel
from streamq.app import App
from streamq.embedded import ValkeyServer
from streamq.envelope import delayed_fields
from streamq.janitor import Janitor
from streamq.keys import GROUP
from streamq.settings import check_name, check_redis_url
from streamq.worker import BURST_HORIZON_S, Worker

__all__ = (
    "ENV_URL",
    "Binding",
    "RunningWorker",
    "bind",
    "delete_prefix",
    "private_server",
    "run_until_idle",
    "running_worker",
    "unique_prefix",
)

ENV_URL = "STREAMQ_TEST_REDIS_URL"
"""Set it to use a running server for tests instead of starting a private one."""
DEFAULT_SCHEDULED_WITHIN_S = BURST_HORIZON_S
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_GRACE_S = 1.0
"""A test worker's grace on stop: a test that ends mid-job does not wait long for it."""
_POLL_S = 0.02
_QUIET_PASSES = 2
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS
_MARKER = "streamq_app"


# -- the server --------------------------------------------------------------------


@contextmanager
def private_server(directory: Path) -> Iterator[str]:
    """Run a private valkey-server for the block; yields its ``unix://`` URL.

    The bundled binary (``streamq.embedded.find_binary``), its log in
    ``directory``, persistence off (no AOF, no snapshots: a test server
    keeps nothing). A socket path too long for the OS goes in a private
    directory under /tmp instead, removed afterwards.
    """
    socket_dir = directory
    temporary: Path | None = None
    if len(str(directory / "valkey.sock")) > _SOCKET_PATH_MAX:
        temporary = socket_dir = Path(tempfile.mkdtemp(prefix="streamq-test-", dir="/tmp"))
    server = ValkeyServer(
        directory, unix_socket=socket_dir / "valkey.sock", extra_args=("--appendonly", "no")
    )
    try:
        try:
            server.start()
        except Exception as exc:
            exc.add_note(f"or set ${ENV_URL} to the URL of a running server to test against")
            raise
        try:
            yield server.url
        finally:
            server.stop()
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def unique_prefix() -> str:
    """A key prefix no other test uses: ``streamq-test-<12 hex digits>``."""
    return f"streamq-test-{uuid.uuid4().hex[:12]}"


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (synchronously); returns how many."""
    pattern = check_name("prefix", prefix) + ":*"
    if sentinel.is_sentinel_url(url):  # the master the sentinels name
        client = sentinel.sync_client(url)
    else:
        client = redis.Redis.from_url(check_redis_url(url))
    deleted = 0
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 500):
            deleted += int(client.delete(*keys[i : i + 500]))
    finally:
        client.close()
    return deleted


# -- binding an App ------------------------------------------------------------------


@dataclass
class Binding:
    """An App pointed at a test server by ``bind``; ``restore()`` puts it back.

    Also an async context manager: ``async with bind(app, ...):``.
    """

    app: App
    _saved: dict[str, Any] = field(repr=False)
    _restored: bool = field(default=False, repr=False)

    async def restore(self) -> None:
        """Close the test connections, then give the App back its own state."""
        if self._restored:
            return
        self._restored = True
        try:
            with anyio.CancelScope(shield=True):
                await self.app.close()
        finally:
            state = vars(self.app)
            state.clear()
            state.update(self._saved)

    async def __aenter__(self) -> App:
        return self.app

    async def __aexit__(self, *exc: object) -> None:
        await self.restore()


def bind(app: App, *, redis_url: str, prefix: str) -> Binding:
    """Point ``app`` itself at ``redis_url``, its keys under ``prefix``, until restored.

    In place, not a copy: your tasks keep a reference to the App they were
    registered on (``Task.app``), so ``send_email.enqueue(...)``, in the test
    or in the code it calls, goes through *that* App. A copy would leave them
    enqueueing to your real queue.

    The App's whole state is saved first. Its settings become the same but
    for the URL and the prefix, and what depends on where it connects starts
    fresh (``_SERVER_STATE``: its keys, client, scripts, result waiters);
    everything else stays yours (serializer, lifespan, middleware, ...), but
    for the task registry, which is a copy of yours: a task the test
    registers is gone afterwards. ``restore()`` closes the test's connections
    and puts every attribute back as it was. Tests in one process run one at
    a time, so nothing else sees the App bound.

    The App keeps its name, so its keys are ``<prefix>:{<name>}:...``: Apps
    bound with one prefix (a producer's and a worker's App of one queue, or
    two queues) see each other as they would in production.
    """
    saved = dict(vars(app))
    settings = app.settings.with_changes(redis_url=check_redis_url(redis_url), prefix=prefix)
    # A fresh App's server state, made on this object (so what refers back to
    # the App, like its result waiters, refers to it); then the rest put back.
    App.__init__(app, app.name, settings=settings, serializer=app.serializer)
    state = vars(app)
    for name, value in saved.items():
        if name not in _SERVER_STATE:
            state[name] = value
    app.tasks = dict(saved["tasks"])
    return Binding(app, saved)


_SERVER_STATE = frozenset(
    {"settings", "keys", "result_waiters", "_redis", "_scripts", "_embedded", "_connect_lock"}
)
"""The App's attributes that ``bind`` makes afresh; it keeps the others as they were."""


# -- running jobs --------------------------------------------------------------------


@dataclass
class _Backlog:
    """What a queue still holds, read from Redis."""

    unread: int = 0
    """Streams with entries not yet delivered to the group (0 or 1 each)."""
    pending: int = 0
    """Entries delivered and not yet recorded, at any consumer."""
    runnable: list[bytes] = field(default_factory=list)
    """Delayed members to run now: retries, and jobs due within the horizon."""
    later: int = 0
    """Delayed jobs scheduled past the horizon (they stay scheduled)."""
    now_ms: int = 0

    @property
    def idle(self) -> bool:
        return not (self.unread or self.pending or self.runnable)

    def describe(self) -> str:
        return (
            f"{self.pending} delivered and not recorded (held by a worker, or by a consumer that "
            f"stopped: reclaimed after the visibility timeout), {self.unread} stream(s) with "
            f"jobs not yet delivered, {len(self.runnable)} delayed job(s) to run, "
            f"{self.later} scheduled later"
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _member_job_id(member: bytes) -> str | None:
    """The job id in a delayed member (``[priority, field, value, ...]`` as JSON)."""
    fields = delayed_fields(member)
    job_id = fields.get("id") if fields is not None else None
    return job_id if isinstance(job_id, str) and job_id else None


async def _backlog(app: App, scheduled_within: float) -> _Backlog:
    """Read the queue's backlog: one MULTI for a consistent picture, one more round trip.

    The MULTI reads each stream's group (pending count, last delivered id) and
    the delayed set together. The second trip looks for entries after the
    last delivered id (acked entries stay in a stream, so one that was
    unread at the MULTI is still found) and reads the delayed jobs' statuses.
    """
    redis_client = await app.node_redis()
    streams = app.streams
    async with redis_client.pipeline(transaction=True) as pipe:
        pipe.time()
        for stream in streams:
            pipe.xinfo_groups(stream)
        pipe.zrange(app.keys.delayed, 0, -1, withscores=True)
        replies = await pipe.execute(raise_on_error=False)
    for reply in (replies[0], replies[-1]):
        if isinstance(reply, Exception):
            raise reply
    seconds, micros = replies[0]
    backlog = _Backlog(now_ms=int(seconds) * 1000 + int(micros) // 1000)
    last_delivered: dict[str, str] = {}
    for stream, groups in zip(streams, replies[1:-1], strict=True):
        if isinstance(groups, ResponseError) and "no such key" in str(groups).lower():
            continue  # no stream yet: nothing in it
        if isinstance(groups, Exception):
            raise groups
        ours = next((g for g in groups if _text(g["name"]) == GROUP), None)
        if ours is None:
            last_delivered[stream] = "0-0"
            continue
        backlog.pending += int(ours["pending"])
        last_delivered[stream] = _text(ours["last-delivered-id"])
    delayed: list[tuple[bytes, float]] = replies[-1]
    job_ids = [_member_job_id(member) for member, _ in delayed]
    async with redis_client.pipeline(transaction=False) as pipe:
        for stream, last in last_delivered.items():
            pipe.xrange(stream, f"({last}", "+", count=1)
        for job_id in job_ids:
            if job_id is not None:
                pipe.hget(app.keys.job(job_id), "status")
        answers = iter(await pipe.execute())
    backlog.unread = sum(bool(next(answers)) for _ in last_delivered)
    horizon_ms = backlog.now_ms + scheduled_within * 1000
    for (member, due_ms), job_id in zip(delayed, job_ids, strict=True):
        status = next(answers) if job_id is not None else None
        if status == b"retrying" or due_ms <= horizon_ms:
            backlog.runnable.append(member)
        else:
            backlog.later += 1
    return backlog


async def _run_now(app: App, janitor: Janitor, backlog: _Backlog) -> None:
    """Make the runnable delayed members due now (by the server's clock) and promote them.

    ``ZADD XX``: a member promoted meanwhile is not added back.
    """
    redis_client = await app.redis()
    await redis_client.zadd(
        app.keys.delayed, dict.fromkeys(backlog.runnable, backlog.now_ms), xx=True
    )
    await janitor.promote_due()


class RunningWorker:
    """A streamq ``Worker`` running in the background, for tests.

    Made by ``running_worker`` (or the ``streamq_worker`` fixture); ``worker``
    is the ``streamq.Worker`` itself.
    """

    def __init__(self, app: App, worker: Worker) -> None:
        self.app = app
        self.worker = worker
        self.failure: BaseException | None = None
        """What ended the worker's ``run`` with an error, if anything did."""
        self.finished = False
        self._up = False

    def __repr__(self) -> str:
        return f"RunningWorker({self.app!r}, consumer={self.worker.consumer!r})"

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await self.worker.run(task_status=task_status)
        except Exception as exc:
            if not self._up:
                raise
            # Kept for run_until_idle and the context's exit to raise, rather
            # than cancelling the test that runs beside the worker.
            self.failure = exc
        finally:
            self.finished = True

    def _check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the test worker failed: {self.failure!r}") from self.failure
        if self.finished:
            raise RuntimeError("the test worker has stopped")

    async def run_until_idle(
        self,
        *,
        scheduled_within: float = DEFAULT_SCHEDULED_WITHIN_S,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """Return once the queue is idle: every job this worker can run has run.

        Retries run at once, whatever their backoff; jobs scheduled to become
        due within ``scheduled_within`` seconds run now too, later ones stay
        scheduled (see the module's docstring for the whole rule). Raises
        TimeoutError after ``timeout`` seconds, saying what was left.
        """
        if scheduled_within < 0 or math.isnan(scheduled_within):
            raise ValueError(f"scheduled_within must be >= 0 seconds, got {scheduled_within!r}")
        from streamq.partitions import all_partitions

        # Every partition of a partitioned queue (partition 0 alone otherwise).
        views = await all_partitions(self.app)
        janitors = [Janitor(view, f"{self.worker.consumer}:run_until_idle") for view in views]
        backlogs = [_Backlog() for _ in views]
        quiet = 0
        with anyio.move_on_after(timeout):
            while True:
                self._check()
                backlogs = [await _backlog(view, scheduled_within) for view in views]
                released = 0
                for view, janitor, backlog in zip(views, janitors, backlogs, strict=True):
                    # Chained jobs whose parents are final: queued now, not at the next pass.
                    released += await janitor.release_children()
                    if backlog.runnable:
                        await _run_now(view, janitor, backlog)
                # Idle twice in a row: the worker's own janitor may release a child
                # between this pass's backlog read and its release step (which then
                # finds nothing to release), so one idle pass can be stale.
                idle = all(backlog.idle for backlog in backlogs)
                quiet = quiet + 1 if idle and not released else 0
                if quiet >= _QUIET_PASSES:
                    return
                await anyio.sleep(_POLL_S)
        left = (
            "; ".join(
                (f"partition {index}: " if len(views) > 1 else "") + backlog.describe()
                for index, backlog in enumerate(backlogs)
                if not backlog.idle or len(views) == 1
            )
            or "chained jobs still being released"
        )
        raise TimeoutError(f"run_until_idle: {self.app!r} was not idle after {timeout} s: {left}")


@asynccontextmanager
async def running_worker(app: App, **worker_options: Any) -> AsyncIterator[RunningWorker]:
    """Run a ``Worker(app, **worker_options)`` in the background for the block.

    ``grace_s`` defaults to 1 s: leaving the block stops the worker, and a
    job still running gets that long to finish. An error that ends the
    worker is raised by ``run_until_idle`` and when the block ends.
    """
    worker_options.setdefault("grace_s", DEFAULT_GRACE_S)
    running = RunningWorker(app, Worker(app, **worker_options))
    async with anyio.create_task_group() as tg:
        await tg.start(running._run)
        running._up = True
        try:
            yield running
        finally:
            running.worker.stop()
    if running.failure is not None:
        raise running.failure


async def run_until_idle(
    app: App,
    *,
    scheduled_within: float = DEFAULT_SCHEDULED_WITHIN_S,
    timeout: float = DEFAULT_TIMEOUT_S,
    **worker_options: Any,
) -> None:
    """Start a worker for ``app``, run every job until the queue is idle, stop it.

    The same rule as ``RunningWorker.run_until_idle``; ``worker_options`` go
    to ``Worker`` (``concurrency=1`` runs jobs one at a time, in priority order).
    """
    async with running_worker(app, **worker_options) as running:
        await running.run_until_idle(scheduled_within=scheduled_within, timeout=timeout)


# -- the pytest plugin ------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(app): the streamq App that the streamq_app fixture binds to the test server",
    )


@pytest.fixture(scope="session")
def streamq_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test server's URL: ``$STREAMQ_TEST_REDIS_URL``, else a private valkey-server."""
    if url := os.environ.get(ENV_URL):
        yield check_redis_url(url)
        return
    with private_server(tmp_path_factory.mktemp("streamq")) as url:
        yield url


@pytest.fixture
def streamq_prefix(streamq_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = unique_prefix()
    yield prefix
    delete_prefix(streamq_url, prefix)


@pytest.fixture
async def streamq_bind(
    streamq_url: str, streamq_prefix: str
) -> AsyncIterator[Callable[[App], App]]:
    """``bind(app)``: point an App at the test server and prefix until the test ends."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pytest.fail(
            "streamq's fixtures need asyncio (redis-py's client is asyncio only): define an "
            "anyio_backend fixture that returns 'asyncio'",
            pytrace=False,
        )
    bindings: dict[int, Binding] = {}

    def bind_app(app: App) -> App:
        if not isinstance(app, App):
            raise TypeError(f"streamq_bind needs a streamq.App, got {app!r}")
        if id(app) not in bindings:
            bindings[id(app)] = bind(app, redis_url=streamq_url, prefix=streamq_prefix)
        return app

    try:
        yield bind_app
    finally:
        for binding in reversed(bindings.values()):
            await binding.restore()


@pytest.fixture
def streamq_app(request: pytest.FixtureRequest, streamq_bind: Callable[[App], App]) -> App:
    """The App of the closest ``streamq_app`` marker, else a fresh ``App("test")``, bound."""
    marker = request.node.get_closest_marker(_MARKER)
    if marker is None:
        return streamq_bind(App("test"))
    if len(marker.args) != 1 or marker.kwargs or not isinstance(marker.args[0], App):
        pytest.fail(
            f"@pytest.mark.{_MARKER} takes one streamq.App, got {marker.args!r} {marker.kwargs!r}",
            pytrace=False,
        )
    return streamq_bind(marker.args[0])


@pytest.fixture
async def streamq_worker(streamq_app: App) -> AsyncIterator[RunningWorker]:
    """A worker serving ``streamq_app`` in the background for the whole test."""
    async with running_worker(streamq_app) as running:
        yield running
