"""Bringing the embedded server back when a connection finds it gone.

The embedded server is shared and detached: someone may stop it
(``streamq server stop``) or kill it while workers and producers run. Their
clients retry a dropped connection anyway (every streamq write is idempotent by
job id); with no URL configured, each failed attempt first makes sure a server
runs on the data dir again, so a worker recovers instead of logging
``fetch failed; retrying`` until a person steps in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from streamq.embedded import Embedded
from streamq.errors import EmbeddedServerError
from streamq.logging import get_logger

T = TypeVar("T")

log = get_logger()


class RevivingRetry(Retry):
    """redis-py's Retry, which also calls ``revive`` after each connection error."""

    def __init__(
        self,
        backoff: AbstractBackoff,
        retries: int,
        supported_errors: tuple[type[RedisError], ...],
        revive: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(backoff, retries, supported_errors)
        self._revive = revive

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        async def on_failure(error: Exception, *count: int) -> None:
            await fail(error, *count)
            if isinstance(error, RedisConnectionError):
                await self._revive()

        return await super().call_with_retry(do, on_failure, is_retryable, with_failure_count)


def reviver(server: Embedded) -> Callable[[], Awaitable[None]]:
    """``ensure`` in a thread (it probes a socket and may start a process)."""

    async def revive() -> None:
        try:
            await anyio.to_thread.run_sync(server.ensure)
            if server.started:
                log.warning("embedded server was gone; started it again", socket=str(server.socket))
                server.started = False
        except EmbeddedServerError as exc:
            log.warning("embedded server is gone and cannot start", error=str(exc))

    return revive
