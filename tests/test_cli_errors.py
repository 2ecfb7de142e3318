"""Every CLI command turns expected failures into one line and a documented exit code.

``streamq.cli.main`` runs in-process with the output captured. Each case is
a real failure: real valkey-servers (the session one, one that wants a
password), a port nobody listens on, a socket that accepts and never answers
and a stub that reports Redis 6.2 (tests/servers.py), App modules written to
a temporary directory. Each must end with exit 2 (bad configuration or
arguments) or 3 (a server that cannot be used), and exactly one line on
stderr, ``streamq: ...``, that names the problem: never a traceback.
"""

from __future__ import annotations

import importlib.metadata
import socket
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import structlog

from streamq.cli import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main
from streamq.embedded import ValkeyServer
from tests.conftest import queue_name
from tests.servers import free_port, old_redis, password_server, silent_server

PASSWORD = "pw-cli-errors"
CONNECT_TIMEOUT_S = "0.3"  # how long the silent server is waited for


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    with password_server(tmp_path_factory.mktemp("locked"), PASSWORD) as server:
        yield server


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """``main()`` in-process configures structlog for the CLI; undo it for later tests."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@dataclass
class Env:
    """What a case's command line is built from."""

    app: str
    """module:app of a sound App, on its own queue, in a module imported fresh."""
    queue: str
    url: str
    """The session valkey-server."""
    locked: str
    """The password server's address, without the password."""
    silent: str
    old: str
    refused: str
    busy_port: int
    module: Callable[[str], str]
    """Writes a module with this source; returns its import name."""


@pytest.fixture
def env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    locked: ValkeyServer,
) -> Iterator[Env]:
    """App modules go to a fresh directory under unique names (each is imported,
    with $STREAMQ_CONNECT_TIMEOUT, by the command itself); sys.path and the
    working directory are restored afterwards."""
    apps = tmp_path / "apps"
    apps.mkdir()
    monkeypatch.chdir(apps)
    monkeypatch.syspath_prepend(str(apps))
    monkeypatch.setenv("STREAMQ_CONNECT_TIMEOUT", CONNECT_TIMEOUT_S)

    def module(source: str) -> str:
        name = f"cli_errors_{uuid.uuid4().hex[:10]}"
        (apps / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    queue = queue_name()
    app_module = module(f"from streamq import App\napp = App({queue!r})\n")
    busy = socket.create_server(("127.0.0.1", 0))
    with silent_server() as silent, old_redis("6.2.14") as old, busy:
        yield Env(
            app=f"{app_module}:app",
            queue=queue,
            url=redis_url,
            locked=f"redis://127.0.0.1:{locked.port}/0",
            silent=f"redis://127.0.0.1:{silent}/0",
            old=f"redis://127.0.0.1:{old}",
            refused=f"redis://127.0.0.1:{free_port()}/0",
            busy_port=int(busy.getsockname()[1]),
            module=module,
        )
    for name in [n for n in sys.modules if n.startswith("cli_errors_")]:
        del sys.modules[name]
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"streamq:{{{queue}}}:*"):
            client.delete(key)
    finally:
        client.close()


def with_password(url: str, password: str, db: int = 0) -> str:
    return url.replace("redis://", f"redis://:{password}@").rsplit("/", 1)[0] + f"/{db}"


def bad_config_app(e: Env) -> list[str]:
    return ["stats", e.module("from streamq import App\napp = App('no spaces allowed')\n")]


def unknown_priority_app(e: Env) -> list[str]:
    source = """
        from streamq import App
        app = App("fine")

        @app.task(priority="urgent")
        def handler() -> None: ...
    """
    return ["worker", e.module(source) + ":app"]


def wrong_key_type(e: Env) -> list[str]:
    key = f"streamq:{{{e.queue}}}:stream:high"
    client = redis.Redis.from_url(e.url)
    try:
        client.set(key, "not a stream")
    finally:
        client.close()
    return ["stats", e.app, "--redis-url", e.url]


CASES: list[tuple[str, Callable[[Env], list[str]], int, str]] = [
    # bad configuration or arguments: exit 2
    ("http-url", lambda e: ["stats", e.app, "--redis-url", "http://127.0.0.1:6379/0"],
     EXIT_USAGE, "redis_url must start with redis://, rediss:// or unix://"),
    ("garbage-url", lambda e: ["doctor", e.app, "--redis-url", "garbage"],
     EXIT_USAGE, "redis_url must start with redis://, rediss:// or unix://"),
    ("port-out-of-range", lambda e: ["stats", e.app, "--redis-url", "redis://127.0.0.1:99999/0"],
     EXIT_USAGE, "redis_url port must be 1..65535"),
    ("no-such-database", lambda e: ["stats", e.app, "--redis-url",
                                    with_password(e.locked, PASSWORD, db=99)],
     EXIT_USAGE, "names database 99"),
    ("app-raises-config-error", bad_config_app, EXIT_USAGE, "queue name must match"),
    ("app-raises-unknown-priority", unknown_priority_app, EXIT_USAGE, "unknown priority 'urgent'"),
    ("worker-empty-app", lambda e: ["worker", ""], EXIT_USAGE, "APP: empty; give module:attribute"),
    ("worker-no-module", lambda e: ["worker", ":app"], EXIT_USAGE, "no module before ':'"),
    ("worker-file-path", lambda e: ["worker", "../noapp"], EXIT_USAGE, "'../noapp' is a file path"),
    ("metrics-port-in-use",
     lambda e: ["worker", e.app, "--redis-url", e.url, "--metrics-port", str(e.busy_port)],
     EXIT_USAGE, "--metrics-port"),
    ("bad-option-value", lambda e: ["worker", e.app, "--concurrency", "0"],
     EXIT_USAGE, "Invalid value for '--concurrency'"),
    ("bad-duration", lambda e: ["dlq", "purge", e.app, "--older-than", "soon", "--yes"],
     EXIT_USAGE, "'soon' is not a duration"),
    ("demo-bad-url", lambda e: ["demo", "--redis-url", "garbage"],
     EXIT_USAGE, "redis_url must start with"),
    # a server that cannot be used: exit 3
    ("refused", lambda e: ["stats", e.app, "--redis-url", e.refused],
     EXIT_UNREACHABLE, "connection refused"),
    ("refused-janitor", lambda e: ["janitor", e.app, "--redis-url", e.refused],
     EXIT_UNREACHABLE, "connection refused"),
    ("silent-stats", lambda e: ["stats", e.app, "--redis-url", e.silent],
     EXIT_UNREACHABLE, f"did not answer within {CONNECT_TIMEOUT_S} s"),
    ("silent-doctor", lambda e: ["doctor", e.app, "--redis-url", e.silent],
     EXIT_UNREACHABLE, f"did not answer within {CONNECT_TIMEOUT_S} s"),
    ("silent-worker", lambda e: ["worker", e.app, "--redis-url", e.silent],
     EXIT_UNREACHABLE, f"did not answer within {CONNECT_TIMEOUT_S} s"),
    ("no-password", lambda e: ["stats", e.app, "--redis-url", e.locked],
     EXIT_UNREACHABLE, "authentication required"),
    ("wrong-password", lambda e: ["worker", e.app, "--redis-url",
                                  with_password(e.locked, "not-it")],
     EXIT_UNREACHABLE, "authentication failed"),
    ("too-old", lambda e: ["stats", e.app, "--redis-url", e.old],
     EXIT_UNREACHABLE, "streamq needs Redis 7.0+ or Valkey 7.2+"),
    ("wrong-key-type", wrong_key_type, EXIT_UNREACHABLE, "holds a string where streamq keeps"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_expected_failures_are_one_line_and_an_exit_code(
    env: Env,
    command: Callable[[Env], list[str]],
    code: int,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = command(env)
    capsys.readouterr()
    assert main(args) == code, capsys.readouterr()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("streamq: "), err
    assert message in lines[0], err
    assert PASSWORD not in err and "not-it" not in err


def test_the_messages_name_what_to_fix(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Spot checks of whole lines: the URL as given, the port, the key."""
    main(["stats", env.app, "--redis-url", env.refused])
    assert capsys.readouterr().err.startswith(f"streamq: cannot connect to {env.refused}: ")
    main(["worker", env.app, "--redis-url", env.url, "--metrics-port", str(env.busy_port)])
    assert f"127.0.0.1:{env.busy_port} is already in use" in capsys.readouterr().err
    main(["stats", env.app, "--redis-url", env.locked])
    assert "put it in the URL, redis://:PASSWORD@host:port" in capsys.readouterr().err
    wrong_key_type(env)
    main(["stats", env.app, "--redis-url", env.url])
    assert f"'streamq:{{{env.queue}}}:stream:high'" in capsys.readouterr().err


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out == f"streamq {importlib.metadata.version('streamq')}\n"


def test_help_shows_boolean_flags_as_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """``--burst`` takes no value: the help must not show one (``--burst <bool>``)."""
    assert main(["worker", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "--burst" in out and "--no-burst" in out
    assert "<bool>" not in out
    assert main(["stats", "--help"]) == EXIT_OK
    assert "<bool>" not in capsys.readouterr().out
