"""The embedded default: one detached valkey-server per data dir, found or started.

Every test works in its own tmp dir (the autouse ``_isolated_home`` fixture
points ``$STREAMQ_HOME`` there and stops any server left under it afterwards),
starts real servers from the bundled binary, and stops in a ``finally`` what
it started in other dirs (``shutdown``): the server is detached by design, so
it would otherwise outlive the test.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamq import App, EmbeddedServerError, embedded
from streamq.cli import main
from streamq.embedded import Embedded
from tests.apps.process import python_child, streamq_child, valkey_pids_serving
from tests.apps.slow import ADD, SLEEP, register
from tests.conftest import running_worker, wait_until

ENSURE_AND_REPORT = """\
import json, sys
from pathlib import Path
from streamq.embedded import Embedded

server = Embedded(Path(sys.argv[1]))
url = server.ensure()
print(json.dumps({"started": server.started, "url": url}), flush=True)
"""

PRODUCER_WAITING = """\
import anyio
from streamq import App
from tests.apps.slow import ADD, register

async def main() -> None:
    app = register(App("embedded-orphan"))
    async with app:
        job = await app.enqueue(ADD, 20, 22)
        print(job.id, flush=True)
        await job.result(timeout=60)   # no worker yet: the test sends SIGTERM here

anyio.run(main)
"""


def shutdown(directory: Path) -> None:
    """Stop whatever server still runs for ``directory`` (cleanup after a failed test)."""
    Embedded(directory).stop()


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose socket path fits in sun_path (no fallback to a shared /tmp path)."""
    path = tmp_path / "e"
    assert embedded.socket_path(path) == path / "valkey.sock"
    yield path
    shutdown(path)


def config(url: str, name: str) -> str:
    with redis.Redis.from_url(url, decode_responses=True, socket_timeout=5) as client:
        return str(client.config_get(name)[name])


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_ensure_starts_a_detached_durable_server_that_others_reuse(directory: Path) -> None:
    """The first ``ensure`` starts a server that is nobody's child; later ones reuse it.

    The server has AOF and noeviction, its pid is in ``valkey.pid``, and it is
    not a child of this process (valkey daemonized itself), so no signal or
    exit of the starter reaches it. A second ``Embedded`` gets the same URL
    and reports it did not start it.
    """
    first = Embedded(directory)
    url = first.ensure()
    assert url == f"unix://{directory / 'valkey.sock'}"
    assert first.started
    (pid,) = valkey_pids_serving(directory)
    assert embedded.read_pid(directory / "valkey.pid") == pid
    assert ppid(pid) != os.getpid(), "the server is still the starter's child"
    assert config(url, "appendonly") == "yes"
    assert config(url, "maxmemory-policy") == "noeviction"
    second = Embedded(directory)
    assert second.ensure() == url
    assert not second.started
    assert valkey_pids_serving(directory) == [pid]
    assert first.stop() == pid
    assert not embedded.ping(first.socket)
    assert valkey_pids_serving(directory) == []
    assert first.stop() is None, "stopping a stopped server is a no-op"


def test_data_survives_a_stop_and_the_next_start(directory: Path) -> None:
    """``stop`` is SIGTERM (valkey flushes its AOF); the next ``ensure`` loads it."""
    first = Embedded(directory)
    url = first.ensure()
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.set("survivor", "yes")
    assert first.stop() is not None
    second = Embedded(directory)
    assert second.ensure() == url
    assert second.started
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        assert client.get("survivor") == b"yes"


def test_a_server_whose_socket_was_removed_is_replaced_not_doubled(directory: Path) -> None:
    """A live server without its socket file is stopped before a new one starts.

    Both would otherwise append to the same AOF; the pidfile is how the old one
    is found. The data written before is still there afterwards.
    """
    server = Embedded(directory)
    url = server.ensure()
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.set("before", "1")
    (old,) = valkey_pids_serving(directory)
    (directory / "valkey.sock").unlink()
    assert Embedded(directory).ensure() == url
    (new,) = valkey_pids_serving(directory)
    assert new != old
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        assert client.get("before") == b"1"


@pytest.mark.anyio
async def test_the_server_outlives_the_app_that_started_it() -> None:
    """``app.close()`` leaves the server running for the other processes.

    Before, the App that started the server stopped it on close, so a worker in
    the next terminal lost its server and never recovered.
    """
    socket = embedded.socket_path(embedded.data_dir())
    producer = register(App("embedded-producer"))
    async with producer:
        job = await producer.enqueue(ADD, 2, 40)
    assert embedded.ping(socket), "closing the starting App stopped the shared server"
    consumer = register(App("embedded-producer"))
    async with consumer:
        async with running_worker(consumer, concurrency=2):
            assert await consumer.job(job.id).result(timeout=10) == 42
        client = await consumer.redis()
        await client.delete(*[k async for k in client.scan_iter("streamq:{embedded-producer}:*")])


@pytest.mark.anyio
async def test_sigterm_on_a_waiting_producer_leaves_a_server_everyone_can_find() -> None:
    """A producer killed while it waits on ``job.result()`` does not take the server along.

    The server it started keeps the job; ``streamq server status`` names the
    one valkey-server serving the data dir and ``streamq server stop`` ends it:
    no process is left that nobody can find.
    """
    home = embedded.data_dir()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    async with python_child(["-c", PRODUCER_WAITING], env) as child:
        job_id = await child.wait_for_line(bool, 30, "with the job id")
        child.signal(signal.SIGTERM)
        await child.wait(timeout_s=15)
    (pid,) = valkey_pids_serving(home)
    app = register(App("embedded-orphan"))
    async with app:
        async with running_worker(app, concurrency=2):
            assert await app.job(job_id.strip()).result(timeout=10) == 42
        client = await app.redis()
        await client.delete(*[k async for k in client.scan_iter("streamq:{embedded-orphan}:*")])
    async with streamq_child(["server", "status", "--json"], env) as status:
        assert await status.wait(timeout_s=30) == 0, status.output()
    assert json.loads(status.stdout[0])["pid"] == pid
    async with streamq_child(["server", "stop"], env) as stop:
        assert await stop.wait(timeout_s=30) == 0, stop.output()
    assert str(pid) in stop.stdout[0]
    assert valkey_pids_serving(home) == []


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["server-stop", "sigkill"])
async def test_a_running_worker_starts_the_server_again_when_it_is_gone(how: str) -> None:
    """Stop or kill the server under a running worker: it comes back on the same data.

    A job enqueued before and one enqueued after both complete. Before, the
    worker only logged ``fetch failed; retrying`` forever. A SIGKILL leaves a
    stale pid file and socket file behind; neither stops the restart.
    """
    home = embedded.data_dir()
    app = register(App("embedded-revive"))
    async with app:
        first = await app.enqueue(SLEEP, 0.0)
        async with running_worker(app, concurrency=2):
            assert await first.result(timeout=10) == 0.0
            if how == "server-stop":
                assert Embedded(home).stop() is not None
            else:
                (pid,) = valkey_pids_serving(home)
                os.kill(pid, signal.SIGKILL)
            await wait_until(
                lambda: embedded.ping(embedded.socket_path(home)),
                timeout=30,
                description="the worker to start the server again",
            )
            second = await app.enqueue(ADD, 1, 2)
            assert await second.result(timeout=20) == 3
            assert await app.job(first.id).status() == "succeeded", "the data did not survive"
        assert len(valkey_pids_serving(home)) == 1
        client = await app.redis()
        await client.delete(*[k async for k in client.scan_iter("streamq:{embedded-revive}:*")])


@pytest.mark.anyio
async def test_two_processes_ensuring_at_once_start_one_server(directory: Path) -> None:
    """The file lock serializes check-and-start: one child starts it, both get its URL."""
    env = dict(os.environ)
    args = ["-c", ENSURE_AND_REPORT, str(directory)]
    async with python_child(args, env) as first, python_child(args, env) as second:
        assert await first.wait(timeout_s=30) == 0, first.output()
        assert await second.wait(timeout_s=30) == 0, second.output()
        reports = [json.loads(child.stdout[0]) for child in (first, second)]
    assert {r["url"] for r in reports} == {f"unix://{directory / 'valkey.sock'}"}
    assert sorted(r["started"] for r in reports) == [False, True]
    assert len(valkey_pids_serving(directory)) == 1
    assert embedded.ping(directory / "valkey.sock"), "the server died with its starter"


def test_server_commands_start_show_and_stop(capsys: pytest.CaptureFixture[str]) -> None:
    """``streamq server start|status|stop``: status shows pid, socket, data dir, memory, uptime."""
    home = embedded.data_dir()
    assert main(["server", "status"]) == 3
    assert "not running" in capsys.readouterr().err
    assert main(["server", "start"]) == 0
    (pid,) = valkey_pids_serving(home)
    assert str(pid) in capsys.readouterr().out
    assert main(["server", "start"]) == 0
    assert "already running" in capsys.readouterr().out
    assert main(["server", "status"]) == 0
    out = capsys.readouterr().out
    for expected in (str(pid), str(embedded.socket_path(home)), str(home), "memory", "uptime"):
        assert expected in out, out
    assert main(["server", "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pid"] == pid and report["used_memory_bytes"] > 0
    assert report["uptime_s"] >= 0 and report["data_dir"] == str(home)
    assert main(["server", "stop"]) == 0
    assert f"stopped the embedded server (pid {pid})" in capsys.readouterr().out
    assert valkey_pids_serving(home) == []
    assert main(["server", "stop"]) == 0
    assert "not running" in capsys.readouterr().out


@pytest.fixture
def fallback_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /tmp, and a data dir too deep for a socket in it."""
    root = tmp_path / "tmproot"
    root.mkdir(mode=0o1777)
    monkeypatch.setattr(embedded, "FALLBACK_ROOT", root)
    return root


def deep(tmp_path: Path) -> Path:
    return tmp_path / ("d" * 120)


def test_the_socket_fallback_dir_is_created_private(tmp_path: Path, fallback_root: Path) -> None:
    path = embedded.socket_path(deep(tmp_path))
    assert path == fallback_root / f"streamq-{os.getuid()}" / "valkey.sock"
    assert (path.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("kind", ["wide-mode", "symlink", "other-owner"])
def test_a_fallback_dir_someone_else_could_control_is_refused(
    kind: str, tmp_path: Path, fallback_root: Path
) -> None:
    """A pre-created /tmp/streamq-<uid> that is not ours alone is refused with a clear error.

    Another local user could create it first and serve a rogue valkey there,
    reading every payload; before, streamq used it silently.
    """
    target = fallback_root / f"streamq-{os.getuid()}"
    if kind == "wide-mode":
        target.mkdir()
        target.chmod(0o755)
        expected = "mode 755"
    elif kind == "symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        target.symlink_to(elsewhere)
        expected = "not a directory"
    else:
        if os.getuid() != 0:
            pytest.skip("changing a directory's owner needs root")
        target.mkdir(mode=0o700)
        os.chown(target, 65534, 65534)
        expected = "belongs to uid 65534"
    with pytest.raises(EmbeddedServerError, match=expected):
        Embedded(deep(tmp_path)).ensure()
    assert not list(deep(tmp_path).glob("valkey.*")), "a server started anyway"
