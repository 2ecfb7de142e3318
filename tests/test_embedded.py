"""The embedded default: one private valkey-server per data dir, found or started.

Every test works in its own tmp dir (the autouse ``_isolated_home`` fixture
points ``$STREAMQ_HOME`` there), starts real servers from the bundled binary,
and shuts down in a ``finally`` whatever it started, even when an assertion
fails first (``shutdown``), since the server runs in its own session and
would otherwise outlive the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamq import App, embedded
from streamq.embedded import Embedded
from tests.apps.process import python_child, valkey_pids_serving
from tests.apps.slow import ADD, register
from tests.conftest import running_worker

ENSURE_AND_HOLD = """\
import json, sys
from pathlib import Path
from streamq.embedded import Embedded

server = Embedded(Path(sys.argv[1]))
url = server.ensure()
print(json.dumps({"owned": server.owned, "url": url}), flush=True)
sys.stdin.read()  # hold the server until the test closes stdin
server.close()
"""


def shutdown(socket: Path) -> None:
    """Stop whatever server still answers on ``socket`` (cleanup after a failed test)."""
    if not embedded.ping(socket):
        return
    with (
        redis.Redis(unix_socket_path=str(socket), socket_timeout=5) as client,
        contextlib.suppress(redis.ConnectionError),
    ):
        client.shutdown(nosave=True)


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose socket path fits in sun_path (no fallback to a shared /tmp path)."""
    path = tmp_path / "e"
    assert embedded.socket_path(path) == path / "valkey.sock"
    yield path
    shutdown(embedded.socket_path(path))


def config(url: str, name: str) -> str:
    with redis.Redis.from_url(url, decode_responses=True, socket_timeout=5) as client:
        return str(client.config_get(name)[name])


def test_ensure_starts_a_durable_server_and_a_second_caller_reuses_it(directory: Path) -> None:
    """The first ``ensure`` starts and owns a server with AOF and noeviction; others reuse it.

    A second ``Embedded`` on the same dir gets the same URL without owning
    the server, so its ``close`` leaves it running; the owner's ``close``
    stops it. Without the ping-before-start, the second call would start a
    second server on the same socket (or fail to); without AOF, a restart
    would lose acknowledged enqueues; with eviction, Redis could drop jobs.
    """
    owner = Embedded(directory)
    url = owner.ensure()
    try:
        assert url == f"unix://{directory / 'valkey.sock'}"
        assert owner.owned
        assert owner.server is not None and owner.server.process is not None
        assert valkey_pids_serving(directory) == [owner.server.process.pid]
        assert config(url, "appendonly") == "yes"
        assert config(url, "maxmemory-policy") == "noeviction"
        guest = Embedded(directory)
        assert guest.ensure() == url
        assert not guest.owned
        guest.close()
        assert embedded.ping(owner.socket), "a non-owner's close stopped the server"
        assert len(valkey_pids_serving(directory)) == 1
    finally:
        owner.close()
    assert not owner.owned
    assert not embedded.ping(owner.socket)
    assert valkey_pids_serving(directory) == []


def test_data_survives_a_restart(directory: Path) -> None:
    """A key written before the owner closes the server is there after the next ``ensure``.

    ``close`` stops the server with SIGTERM, which flushes the AOF; the next
    ``ensure`` starts a fresh process on the same dir and loads it. Without
    AOF (or with a data dir that is not reused) the key would be gone.
    """
    first = Embedded(directory)
    url = first.ensure()
    try:
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            client.set("survivor", "yes")
    finally:
        first.close()
    assert not embedded.ping(first.socket)
    second = Embedded(directory)
    try:
        assert second.ensure() == url
        assert second.owned, "the first server did not stop"
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            assert client.get("survivor") == b"yes"
    finally:
        second.close()


@pytest.mark.anyio
async def test_app_without_url_starts_the_embedded_server_and_close_stops_it() -> None:
    """``App(name)`` with no URL anywhere runs on the embedded server it starts.

    ``$STREAMQ_REDIS_URL`` is unset and ``$STREAMQ_HOME`` is a tmp dir: a job
    round-trips through the server under that dir, and ``await app.close()``
    stops it because this App started it. Without the stop, every short-lived
    producer would leave a valkey-server behind.
    """
    socket = embedded.socket_path(embedded.data_dir())
    assert not embedded.ping(socket)
    app = register(App("embedded-app"))
    try:
        job = await app.enqueue(ADD, 2, 40)
        assert embedded.ping(socket)
        async with running_worker(app, concurrency=2):
            assert await job.result(timeout=10) == 42
        await app.close()
        assert not embedded.ping(socket)
    finally:
        await app.close()
        shutdown(socket)


@pytest.mark.anyio
async def test_app_close_leaves_a_server_it_did_not_start() -> None:
    """An App that found the embedded server already running does not stop it on close.

    Another process (here, an ``Embedded`` owner) started it and may still
    use it: a producer closing its App must not pull the server from under
    a worker in the next terminal.
    """
    owner = Embedded(embedded.data_dir())
    owner.ensure()
    try:
        app = register(App("embedded-guest"))
        try:
            job = await app.enqueue(ADD, 1, 1)
            assert job.id
        finally:
            await app.close()
        assert embedded.ping(owner.socket), "the guest App stopped a server it did not start"
        with redis.Redis.from_url(owner.url, socket_timeout=5) as client:
            keys = client.keys("streamq:{embedded-guest}:*")
            assert keys, "the App did not use the running embedded server"
            client.delete(*keys)
    finally:
        owner.close()
    assert not embedded.ping(owner.socket)


@pytest.mark.anyio
async def test_two_processes_ensuring_at_once_share_one_server(directory: Path) -> None:
    """Two processes calling ``ensure`` together end with one server, owned by one of them.

    The file lock serializes the check-and-start: exactly one child reports
    ``owned``, both report the same URL. The server stays up while the owner
    runs after the other exits, and stops when the owner exits. Without the
    lock, both could see no server and start one each on the same socket.
    """
    env = dict(os.environ)
    args = ["-c", ENSURE_AND_HOLD, str(directory)]
    stdin = subprocess.PIPE  # each child holds the server until its stdin closes
    async with (
        python_child(args, env, stdin=stdin) as first,
        python_child(args, env, stdin=stdin) as second,
    ):
        lines = [
            await child.wait_for_line(lambda line: line.startswith("{"), 20, "with the URL")
            for child in (first, second)
        ]
        reports = [json.loads(line) for line in lines]
        assert {r["url"] for r in reports} == {f"unix://{directory / 'valkey.sock'}"}
        assert sorted(r["owned"] for r in reports) == [False, True]
        assert len(valkey_pids_serving(directory)) == 1
        owner, guest = (first, second) if reports[0]["owned"] else (second, first)
        await guest.close_stdin()
        assert await guest.wait(timeout_s=10) == 0, guest.output()
        assert embedded.ping(directory / "valkey.sock")
        await owner.close_stdin()
        assert await owner.wait(timeout_s=15) == 0, owner.output()
        assert not embedded.ping(directory / "valkey.sock")
        assert valkey_pids_serving(directory) == []
