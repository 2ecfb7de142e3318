"""TLS: a ``rediss://`` URL with a CA and a client certificate, against a real TLS server.

The server is Debian's redis-server (the embedded valkey has no TLS) on a
loopback TLS port only, with ``--tls-auth-clients yes`` and certificates each
run makes (tests/tls_support.py). The TLS options travel in the URL's query,
as redis-py reads them (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs``), so they reach every connection streamq opens: the
connect-time check, the pool, and the worker's dedicated connections.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from streamq import App, ConfigError, ServerUnavailable, Settings
from streamq.cli import EXIT_UNREACHABLE, main
from streamq.connection import check_server
from streamq.settings import mask_url
from tests.conftest import queue_name, running_worker
from tests.tls_support import TlsServer, make_ca, tls_redis

QUICK = Settings(connect_timeout_s=2.0)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    with tls_redis(tmp_path_factory.mktemp("tls")) as server:
        yield server


@pytest.fixture
def wrong_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the server's certificate."""
    return make_ca(tmp_path / "other", "other-ca")[0]


@pytest.mark.anyio
async def test_jobs_run_end_to_end_over_tls_with_a_client_certificate(tls: TlsServer) -> None:
    """Enqueue, a worker (its fetch loop and outcome writer hold dedicated
    connections), the result: all over rediss:// on a server that requires a
    client certificate; the janitor's duties run too (a delayed job)."""
    url = tls.url(ssl_cert_reqs="required")
    application = App(queue_name(), settings=Settings(redis_url=url, janitor_interval_s=0.05))

    @application.task
    async def add(a: int, b: int) -> int:
        return a + b

    async with application:
        version = await check_server(tls.url(), QUICK)
        assert version is not None and version.product == "Redis"
        async with running_worker(application, concurrency=2):
            now = await add.enqueue(2, 3)
            later = await add.enqueue_in(0.1, 4, 5)
            assert await now.result(timeout=10) == 5
            assert await later.result(timeout=10) == 9
        redis = await application.redis()
        connection = await redis.connection_pool.get_connection()
        try:
            assert type(connection).__name__ == "_FastSSLConnection"
        finally:
            await redis.connection_pool.release(connection)


@pytest.mark.anyio
async def test_a_server_certificate_from_another_ca_is_refused_at_connect(
    tls: TlsServer, wrong_ca: Path
) -> None:
    with pytest.raises(ServerUnavailable) as caught:
        await check_server(tls.url(ca=wrong_ca), QUICK)
    message = str(caught.value)
    assert message.startswith("cannot connect to rediss://127.0.0.1:")
    assert "the server's TLS certificate was refused: self-signed certificate" in message
    assert "ssl_ca_certs must name the CA that signed it" in message


@pytest.mark.anyio
async def test_no_client_certificate_is_refused_when_the_server_requires_one(
    tls: TlsServer,
) -> None:
    with pytest.raises(ServerUnavailable) as caught:
        await check_server(tls.url(client_cert=False), QUICK)
    assert "closed the connection" in str(caught.value)
    assert "requires client certificates, pass ssl_certfile and ssl_keyfile" in str(caught.value)


@pytest.mark.anyio
async def test_a_plain_url_on_a_tls_port_says_to_use_rediss(tls: TlsServer) -> None:
    with pytest.raises(ServerUnavailable, match=r"if that port speaks TLS, use a rediss:// URL"):
        await check_server(f"redis://127.0.0.1:{tls.port}/0", QUICK)


def test_the_cli_exits_3_with_one_line_for_an_untrusted_certificate(
    tls: TlsServer,
    wrong_ca: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"tls_app_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"from streamq import App\napp = App({queue_name()!r})\n")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = structlog.get_config()
    try:
        code = main(["stats", f"{name}:app", "--redis-url", tls.url(ca=wrong_ca)])
    finally:
        structlog.configure(**saved)
        sys.modules.pop(name, None)
    err = capsys.readouterr().err
    assert code == EXIT_UNREACHABLE, err
    assert len(err.splitlines()) == 1 and err.startswith("streamq: cannot connect to rediss://")
    assert "TLS certificate was refused" in err and "Traceback" not in err


# -- the URL's TLS options are checked when the App is built (no server needed) -------------


def test_tls_options_on_a_plain_url_are_refused() -> None:
    with pytest.raises(ConfigError, match="sets ssl_ca_certs, a TLS option: use a rediss://"):
        Settings(redis_url="redis://127.0.0.1:6379/0?ssl_ca_certs=/etc/hosts")


def test_a_misspelt_tls_option_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="unknown TLS option 'ssl_ca_cert'"):
        Settings(redis_url="rediss://127.0.0.1:6379/0?ssl_ca_cert=/etc/hosts")


def test_a_missing_certificate_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(ConfigError, match=f"ssl_certfile names '{missing}', which is not a file"):
        Settings(redis_url=f"rediss://h:6380/0?ssl_ca_certs=/etc/hosts&ssl_certfile={missing}")


def test_bad_cert_reqs_and_a_key_without_its_certificate_are_refused() -> None:
    with pytest.raises(ConfigError, match="ssl_cert_reqs must be one of none, optional, required"):
        Settings(redis_url="rediss://h:6380/0?ssl_cert_reqs=maybe")
    with pytest.raises(ConfigError, match="ssl_keyfile without ssl_certfile"):
        Settings(redis_url="rediss://h:6380/0?ssl_keyfile=/etc/hosts")


def test_the_key_password_in_a_url_is_masked() -> None:
    url = "rediss://u:secret@h:6380/0?ssl_password=hunter2&ssl_cert_reqs=none"
    assert mask_url(url) == "rediss://u:***@h:6380/0?ssl_password=***&ssl_cert_reqs=none"
