"""Redis connections: a URL (or the embedded server) becomes one pooled client.

The pool is a BlockingConnectionPool: past ``max_connections`` a caller waits
for a free connection instead of getting MaxConnectionsError (redis-py's
default pool raises). Commands are retried after a dropped connection or a
timeout, which is safe because every streamq write is idempotent by job id.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamq.settings import Settings

POOL_WAIT_S = 30.0


def make_client(url: str, settings: Settings) -> Redis:
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=8)
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
    return Redis(connection_pool=pool)
