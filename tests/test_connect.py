"""The connect-time check: one short connection says what is wrong with a server.

``check_server`` (called by ``App.redis()``) runs against real valkey-servers
(the session one, one with ``--requirepass``) and against loopback sockets
that are not Redis: a port nobody listens on, one that accepts and never
answers, and a stub that reports an old ``redis_version`` (see tests/servers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from streamq import App, ConfigError, ServerTooOld, ServerUnavailable, Settings
from streamq.connection import ServerVersion, check_server, server_version
from streamq.embedded import ValkeyServer
from tests.compat.plugin import session_server
from tests.conftest import queue_name
from tests.servers import free_port, old_redis, password_server, silent_server

pytestmark = pytest.mark.anyio
PASSWORD = "pw-connect-tests"
QUICK = Settings(connect_timeout_s=0.3)


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    """A valkey-server on a loopback port that wants a password."""
    with password_server(tmp_path_factory.mktemp("locked"), PASSWORD) as server:
        yield server


def locked_url(server: ValkeyServer, password: str | None = PASSWORD, db: int = 0) -> str:
    auth = "" if password is None else f":{password}@"
    return f"redis://{auth}127.0.0.1:{server.port}/{db}"


async def test_a_server_streamq_can_use_passes_and_says_what_it_is(redis_url: str) -> None:
    version = await check_server(redis_url, QUICK)
    assert version is not None and version.supported
    assert str(version) == session_server()  # Valkey 9.1.x; Redis 7.0.15 under redis7


async def test_a_refused_port_fails_at_once_naming_the_url() -> None:
    """No pool, no retries: ServerUnavailable (also a redis ConnectionError) says
    nothing listens there, with the URL as given."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ServerUnavailable) as caught:
        await check_server(url, QUICK)
    assert isinstance(caught.value, redis.exceptions.ConnectionError)
    assert str(caught.value).startswith(f"cannot connect to {url}: connection refused")


async def test_a_missing_socket_file_is_named(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nobody.sock"
    with pytest.raises(ServerUnavailable, match="no such socket file") as caught:
        await check_server(url, QUICK)
    assert url in str(caught.value)


async def test_a_server_that_never_answers_is_given_up_after_the_connect_timeout() -> None:
    """The socket accepts (the kernel completes the handshake) and stays silent:
    the first reply is bounded by ``connect_timeout_s``, not waited for forever."""
    with silent_server() as port, pytest.raises(ServerUnavailable) as caught:
        await check_server(f"redis://127.0.0.1:{port}/0", QUICK)
    assert str(caught.value) == (
        f"redis://127.0.0.1:{port}/0 accepted the connection but did not answer "
        "within 0.3 s; is it a Redis server?"
    )


async def test_a_password_protected_server_without_the_password(locked: ValkeyServer) -> None:
    """Says "authentication required" and where the password goes, not HELLO's text."""
    with pytest.raises(ServerUnavailable) as caught:
        await check_server(locked_url(locked, password=None), QUICK)
    message = str(caught.value)
    assert message.startswith("authentication required:")
    assert "redis://:PASSWORD@host:port" in message
    assert "HELLO" not in message


async def test_a_wrong_password_is_named_and_masked(locked: ValkeyServer) -> None:
    with pytest.raises(ServerUnavailable) as caught:
        await check_server(locked_url(locked, password="not-it"), QUICK)
    message = str(caught.value)
    assert message.startswith(f"authentication failed on redis://:***@127.0.0.1:{locked.port}/0")
    assert "password" in message and "not-it" not in message
    assert await check_server(locked_url(locked), QUICK) is not None


async def test_a_database_the_server_does_not_have_is_a_config_error(
    locked: ValkeyServer,
) -> None:
    with pytest.raises(ConfigError, match="names database 99") as caught:
        await check_server(locked_url(locked, db=99), QUICK)
    assert PASSWORD not in str(caught.value)


async def test_a_server_older_than_redis_7_is_refused_with_the_version_found() -> None:
    """streamq's scripts start with ``#!lua flags=``, which Redis 6.2 rejects in
    every call: refusing at connect says so once, clearly."""
    with old_redis("6.2.14") as port:
        url = f"redis://127.0.0.1:{port}"
        with pytest.raises(ServerTooOld) as caught:
            await check_server(url, QUICK)
    needs = "streamq needs Redis 7.0+ or Valkey 7.2+"
    assert str(caught.value) == f"{needs}; {url} runs Redis 6.2.14"


async def test_app_redis_checks_the_server_before_handing_out_a_client() -> None:
    """``App.redis()`` (so ``async with app``, every CLI command) refuses an old server
    and accepts one at the minimum; the stub answers nothing but the handshake."""
    with old_redis("6.2.14") as old:
        app = App(queue_name(), redis_url=f"redis://127.0.0.1:{old}")
        with pytest.raises(ServerTooOld, match="runs Redis 6.2.14"):
            await app.redis()
        await app.close()
    with old_redis("7.0.0") as new_enough:
        app = App(queue_name(), redis_url=f"redis://127.0.0.1:{new_enough}")
        try:
            await app.redis()
        finally:
            await app.close()


async def test_a_user_who_may_not_run_info_still_connects(redis_url: str) -> None:
    """A managed service's user often lacks INFO: the version comes from HELLO."""
    user = f"noinfo{queue_name()}"
    admin = redis.asyncio.Redis.from_url(redis_url)
    await admin.acl_setuser(
        user, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
        commands=["+@all", "-info"],
    )  # fmt: skip
    try:
        path = redis_url.removeprefix("unix://")
        version = await check_server(f"unix://{user}:{PASSWORD}@{path}", QUICK)
        assert version is not None and str(version) == session_server()
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()


@pytest.mark.parametrize(
    ("info", "found", "supported"),
    [
        ({"redis_version": "6.2.14"}, "Redis 6.2.14", False),
        ({"redis_version": "7.0.0"}, "Redis 7.0.0", True),
        ({"redis_version": "7.4.2"}, "Redis 7.4.2", True),
        ({"redis_version": "7.2.4", "valkey_version": "8.1.1"}, "Valkey 8.1.1", True),
        ({"server": "valkey", "version": "8.0.2"}, "Valkey 8.0.2", True),
        ({b"server": b"redis", b"version": b"6.2.6"}, "Redis 6.2.6", False),
    ],
)
def test_server_version_reads_info_and_hello_fields(
    info: dict[str, str], found: str, supported: bool
) -> None:
    version = server_version(info)
    assert isinstance(version, ServerVersion)
    assert (str(version), version.supported) == (found, supported)
