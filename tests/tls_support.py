"""A real Redis with TLS on certificates the test makes (``openssl``, Debian's ``redis-server``).

The embedded valkey-server is built without TLS; Debian's ``redis-server``
(Redis 7.0) has it. Without either binary the TLS tests are skipped as NOT
RUN, loudly; with ``STREAMQ_REQUIRE_TLS=1`` (set by .ci/run) they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.servers import free_port

NOT_RUN = "TLS TESTS NOT RUN"
REQUIRE_ENV = "STREAMQ_REQUIRE_TLS"


def require_tls_tools() -> str:
    """The redis-server path; else skip (or fail under ``STREAMQ_REQUIRE_TLS=1``)."""
    missing = [name for name in ("redis-server", "openssl") if shutil.which(name) is None]
    if not missing:
        return str(shutil.which("redis-server"))
    message = (
        f"{NOT_RUN}: {' and '.join(missing)} not on PATH "
        "(install them: apt-get install redis-server openssl)"
    )
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{message}, and {REQUIRE_ENV} is set", pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert), cwd=directory,
    )  # fmt: skip
    return cert, key


def _signed(
    directory: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(csr), cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext_file), "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory, "test-ca")
    server = _signed(
        directory, "server", ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    client = _signed(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], server[0], server[1], client[0], client[1])


@dataclass(frozen=True)
class TlsServer:
    port: int
    pki: Pki

    def url(self, *, ca: Path | None = None, client_cert: bool = True, **extra: str) -> str:
        """A ``rediss://`` URL with the CA (or ``ca``) and, unless told not, the client pair."""
        query = {"ssl_ca_certs": str(ca or self.pki.ca)}
        if client_cert:
            query |= {"ssl_certfile": str(self.pki.client_cert)}
            query |= {"ssl_keyfile": str(self.pki.client_key)}
        query |= extra
        return f"rediss://127.0.0.1:{self.port}/0?{urlencode(query)}"


@contextmanager
def tls_redis(directory: Path) -> Iterator[TlsServer]:
    """Debian's redis-server on a loopback TLS port only, requiring client certificates."""
    binary = require_tls_tools()
    pki = make_pki(directory / "pki")
    port = free_port()
    log = directory / "redis.log"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(pki.server_cert),
            "--tls-key-file",
            str(pki.server_key),
            "--tls-ca-cert-file",
            str(pki.ca),
            "--tls-auth-clients",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(log),
            "--daemonize",
            "no",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while "Ready to accept connections" not in (log.read_text() if log.exists() else ""):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server with TLS did not start:\n{log.read_text()}")
            time.sleep(0.01)
        yield TlsServer(port, pki)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
