"""Redis connections: a URL (or the embedded server) becomes one pooled client.

Commands are packed by hiredis when it is installed (it is a dependency), as
redis-py's sync client already does: redis-py's asyncio packer is pure Python
and grows its buffer by copying once per argument, which made a batched
outcome script (hundreds of arguments) cost milliseconds to serialize.

The pool is a BlockingConnectionPool: past ``max_connections`` a caller waits
for a free connection instead of getting MaxConnectionsError (redis-py's
default pool raises). Commands are retried after a dropped connection or a
timeout, which is safe because every streamq write is idempotent by job id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamq.revive import RevivingRetry
from streamq.settings import Settings

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
        socket_connect_timeout=settings.socket_timeout_s,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        client_name="streamq",
    )
    if _pack is not None:
        pool.connection_class = _FAST_CLASSES.get(pool.connection_class, pool.connection_class)
    return Redis(connection_pool=pool)


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
