"""Redis connections: a URL (or the embedded server) becomes one pooled client.

Commands are packed by hiredis when it is installed (it is a dependency), as
redis-py's sync client already does: redis-py's asyncio packer is pure Python
and grows its buffer by copying once per argument, which made a batched
outcome script (hundreds of arguments) cost milliseconds to serialize.

The pool is a BlockingConnectionPool: past ``max_connections`` a caller waits
for a free connection instead of getting MaxConnectionsError (redis-py's
default pool raises). Commands are retried after a dropped connection or a
timeout, which is safe because every streamq write is idempotent by job id.

Before the pool is made, ``check_server`` opens one connection without
retries and bounded by ``connect_timeout_s``: an unreachable, silent, locked
or too old server is refused there, with a message that says which.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import str_if_bytes

from streamq.errors import ConfigError, ServerTooOld, ServerUnavailable
from streamq.revive import RevivingRetry
from streamq.settings import Settings, mask_url

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency
    _pack = None

POOL_WAIT_S = 30.0


def make_client(
    url: str, settings: Settings, revive: Callable[[], Awaitable[None]] | None = None
) -> Redis:
    """A pooled client; ``revive`` runs after each connection error (the embedded server)."""
    backoff = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
    retryable = (RedisConnectionError, RedisTimeoutError)
    retry = (
        Retry(backoff, retries=8, supported_errors=retryable)
        if revive is None
        else RevivingRetry(backoff, 8, retryable, revive)
    )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=POOL_WAIT_S,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        client_name="streamq",
    )
    if _pack is not None:
        pool.connection_class = _FAST_CLASSES.get(pool.connection_class, pool.connection_class)
    return Redis(connection_pool=pool)


@asynccontextmanager
async def held(client: Redis) -> AsyncIterator[Redis]:
    """``dedicated(client)`` for the block; its connection goes back to the pool at
    the end even when the block is cancelled. (redis-py's own ``async with`` exit
    skips the close when cancelled, leaving the client to the garbage collector.)"""
    one = dedicated(client)
    try:
        yield one
    finally:
        with anyio.CancelScope(shield=True):
            await one.aclose()


def dedicated(client: Redis) -> Redis:
    """A client holding one connection of ``client``'s pool for a serial loop.

    Taking and returning a pooled connection (BlockingConnectionPool's
    condition) costs about a quarter of a small call's client-side CPU; the
    worker's fetch loop and outcome writer each make one call at a time, so
    each keeps one connection. ``aclose()`` gives it back to the pool.
    """
    return Redis(connection_pool=client.connection_pool, single_connection_client=True)


class _HiredisPacker:
    """pack_command through hiredis, with redis-py's own argument normalization."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        assert _pack is not None
        try:
            return [_pack(args)]
        except TypeError:  # bytearray and the like: hiredis wants bytes
            return [
                _pack(tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args))
            ]


class _FastConnection(_HiredisPacker, Connection):
    pass


class _FastUnixConnection(_HiredisPacker, UnixDomainSocketConnection):
    pass


class _FastSSLConnection(_HiredisPacker, SSLConnection):
    pass


_FAST_CLASSES: dict[type[Any], type[Any]] = {
    Connection: _FastConnection,
    UnixDomainSocketConnection: _FastUnixConnection,
    SSLConnection: _FastSSLConnection,
}


def fast_class(base: type[Any]) -> type[Any]:
    """``base`` (a sentinel-managed connection, say) packing commands with hiredis."""
    if _pack is None:  # pragma: no cover - hiredis is a dependency
        return base
    if base not in _FAST_CLASSES:
        _FAST_CLASSES[base] = type(f"_Fast{base.__name__}", (_HiredisPacker, base), {})
    return _FAST_CLASSES[base]


# -- the connect-time check ------------------------------------------------------------

MIN_REDIS = (7, 0)
"""The scripts declare their flags in a ``#!lua flags=`` first line (Redis 7.0)."""
MIN_VALKEY = (7, 2)
"""The first Valkey release (forked from Redis 7.2): every Valkey qualifies."""


def version_tuple(text: str) -> tuple[int, ...]:
    """``"7.2.4"`` → ``(7, 2, 4)``; ignores suffixes such as ``-rc1``."""
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@dataclass(frozen=True, slots=True)
class ServerVersion:
    """What the server says it is: ``Valkey 8.1.1``, ``Redis 7.4.2``."""

    product: str
    version: str
    redis_version: str
    """The ``redis_version`` field (Valkey keeps reporting 7.2.x there)."""

    @property
    def minimum(self) -> tuple[int, ...]:
        return MIN_VALKEY if self.product == "Valkey" else MIN_REDIS

    @property
    def supported(self) -> bool:
        return version_tuple(self.version) >= self.minimum

    def __str__(self) -> str:
        return f"{self.product} {self.version}"


def server_version(info: Mapping[str, Any]) -> ServerVersion:
    """The version from ``INFO server`` fields (or from a HELLO reply's)."""
    fields = {str_if_bytes(k): str_if_bytes(v) for k, v in info.items()}
    redis_version = str(fields.get("redis_version") or fields.get("version") or "0")
    if "valkey_version" in fields:
        return ServerVersion("Valkey", str(fields["valkey_version"]), redis_version)
    if str(fields.get("server", "")).lower() == "valkey":
        return ServerVersion("Valkey", str(fields.get("version", "0")), redis_version)
    return ServerVersion("Redis", redis_version, redis_version)


async def check_server(url: str, settings: Settings) -> ServerVersion | None:
    """Connect once, without retries, and check that streamq can use this server.

    Connecting and each reply are bounded by ``settings.connect_timeout_s``, so
    a refused connection fails at once and a server that never answers fails
    after that bound, not after the pool's retries. Raises ServerUnavailable
    (not there, no answer, authentication refused), ConfigError (a database
    index the server does not have) or ServerTooOld (below Redis 7.0). Returns
    the server's version, or None when the user may read neither ``INFO`` nor
    ``HELLO`` (the version then goes unchecked; ``streamq doctor`` says so).
    """
    shown = mask_url(url)
    wait = f"{settings.connect_timeout_s:g} s"
    phase = "connect"

    async def handshake(connection: Any) -> None:
        nonlocal phase
        phase = "handshake"
        await connection.on_connect()
        phase = "ready"

    client = Redis.from_url(
        url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        redis_connect_func=handshake,
        single_connection_client=True,
    )
    try:
        try:
            info = await _command(client, "INFO", "server")
        except ResponseError:
            if phase != "ready":
                raise
            info = await _hello(client)  # INFO denied to this user: HELLO says it too
    except AuthenticationError as exc:
        if "@" not in url.partition("://")[2].partition("/")[0]:
            raise ServerUnavailable(
                f"authentication required: {shown} asks for a password; put it in the URL, "
                f"{_password_hint(url)}"
            ) from None
        raise ServerUnavailable(
            f"authentication failed on {shown}: {str(exc).rstrip('.')} "
            "(check the user and password in the URL)"
        ) from None
    except RedisTimeoutError:
        if phase == "connect":
            raise ServerUnavailable(
                f"cannot connect to {shown}: no connection within {wait}"
            ) from None
        raise ServerUnavailable(
            f"{shown} accepted the connection but did not answer within {wait}; "
            "is it a Redis server?"
        ) from None
    except RedisConnectionError as exc:
        if phase == "connect":
            raise ServerUnavailable(f"cannot connect to {shown}: {_why(exc)}") from None
        raise ServerUnavailable(
            f"{shown} closed the connection: {exc}{_closed_hint(url)}"
        ) from None
    except ResponseError as exc:
        text = str(exc)
        if "DB index is out of range" in text:
            db = client.connection_pool.connection_kwargs.get("db")
            raise ConfigError(
                f"redis_url names database {db}, which {shown} does not have "
                "(its `databases` setting bounds the index)"
            ) from None
        if "unknown command" in text.lower() and "hello" in text.lower():
            raise ServerTooOld(shown, "a server without HELLO (older than Redis 6.0)") from None
        raise ServerUnavailable(f"{shown} refused the connection: {text}") from None
    except RedisError as exc:
        raise ServerUnavailable(f"{shown} did not answer as a Redis server: {exc}") from None
    finally:
        await client.aclose()
    if info is None:
        return None
    version = server_version(info)
    if not version.supported:
        raise ServerTooOld(shown, str(version))
    return version


async def _command(client: Redis, *args: str) -> Any:
    execute: Callable[..., Awaitable[Any]] = client.execute_command
    return await execute(*args)


async def _hello(client: Redis) -> Mapping[str, Any] | None:
    try:
        reply = await _command(client, "HELLO")
    except ResponseError:
        return None
    if isinstance(reply, list):  # RESP2: field, value, field, value...
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    return reply if isinstance(reply, Mapping) else None


def _password_hint(url: str) -> str:
    if url.startswith("unix:"):
        return "unix://:PASSWORD@/path/to/socket (or unix://USER:PASSWORD@/path/to/socket)"
    scheme = url.partition("://")[0]
    return f"{scheme}://:PASSWORD@host:port (or {scheme}://USER:PASSWORD@host:port)"


def explain_connection_error(exc: RedisConnectionError) -> str:
    """Why a connection failed, in words (refused, no socket file, TLS...)."""
    return _why(exc)


def _why(exc: RedisConnectionError) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (is the server running, on that port?)"
    if isinstance(cause, FileNotFoundError):
        return "no such socket file (is the server running, with that unixsocket?)"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"the server's TLS certificate was refused: {cause.verify_message} "
            "(ssl_ca_certs must name the CA that signed it, for the host in the URL)"
        )
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    return str(exc)


def _closed_hint(url: str) -> str:
    """Why a server may drop a connection at once: TLS on one side only, or no client cert."""
    scheme, _, rest = url.partition("://")
    if scheme == "redis":
        return " (if that port speaks TLS, use a rediss:// URL)"
    if scheme == "rediss" and "ssl_certfile=" not in rest:
        return (
            " (if the server requires client certificates, pass ssl_certfile and "
            "ssl_keyfile in the URL's query)"
        )
    return ""
