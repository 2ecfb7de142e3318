"""Loopback servers for the connect-time checks.

``silent_server`` accepts connections and never answers (a wrong port, a
hung proxy). ``old_redis`` is a stub that speaks just enough RESP for a
redis-py handshake and ``INFO``, and reports an old ``redis_version``: it
tests streamq's version gate, not Redis behaviour, so nothing real is mocked.
Both run in a thread and listen on 127.0.0.1 only. ``password_server`` is a
real valkey-server that wants a password.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from streamq.embedded import ValkeyServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def password_server(directory: Path, password: str) -> Iterator[ValkeyServer]:
    """A real valkey-server on a loopback port with ``--requirepass``."""
    server = ValkeyServer(directory, port=free_port(), extra_args=["--requirepass", password])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def _listening(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """Accept on a loopback port in a thread, passing each connection to ``handle``."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            handle(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never sends a byte; yields the port."""
    held: list[socket.socket] = []  # kept open, never read or written
    try:
        with _listening(held.append) as port:
            yield port
    finally:
        for conn in held:
            conn.close()


def _bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class _Reader:
    """Reads RESP arrays of bulk strings (what clients send) from a socket."""

    def __init__(self, conn: socket.socket) -> None:
        self.file = conn.makefile("rb")

    def _line(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def command(self) -> list[str] | None:
        header = self._line()
        if not header.startswith(b"*"):
            return None
        args = []
        for _ in range(int(header[1:])):
            size = int(self._line()[1:])
            args.append(self.file.read(size + 2)[:-2].decode())
        return args


@contextmanager
def old_redis(version: str = "6.2.14") -> Iterator[int]:
    """A RESP stub reporting ``redis_version:<version>``; yields its port.

    Answers HELLO (as Redis 6 does, with a RESP3 map), CLIENT SETNAME, SELECT
    and PING; INFO with a Server section; anything else with an error, as a
    server that does not know the command would.
    """
    info = f"# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n"
    hello = {"server": "redis", "version": version, "proto": "3", "mode": "standalone"}
    hello_reply = b"%%%d\r\n" % len(hello) + b"".join(
        _bulk(k) + (b":3\r\n" if k == "proto" else _bulk(v)) for k, v in hello.items()
    )

    def reply(args: list[str]) -> bytes:
        name = args[0].upper()
        sub = args[1].upper() if len(args) > 1 else ""
        if name == "HELLO":
            return hello_reply
        if name == "PING":
            return b"+PONG\r\n"
        if name == "SELECT" or (name == "CLIENT" and sub == "SETNAME"):
            return b"+OK\r\n"
        if name == "INFO":
            return _bulk(info)
        return f"-ERR unknown command '{args[0]}'\r\n".encode()

    def serve(conn: socket.socket) -> None:
        with conn:
            reader = _Reader(conn)
            try:
                while (args := reader.command()) is not None:
                    conn.sendall(reply(args))
            except (OSError, ValueError):
                return

    def handle(conn: socket.socket) -> None:
        threading.Thread(target=serve, args=(conn,), daemon=True).start()

    with _listening(handle) as port:
        yield port
