"""Key types: which Redis type each key of a queue holds, and naming a WRONGTYPE's key.

Redis answers a command on a key of another type with ``WRONGTYPE``, which
names neither the key nor the type wanted, and inside a script not even the
command. When a call fails so, ``explain`` asks TYPE of the keys that call
touched and returns a ``WrongKeyType`` for the first one that is not what
streamq keeps there. ``find_wrong_types`` checks every key of a queue (for
``streamq doctor``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NoReturn, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from streamq.errors import WrongKeyType
from streamq.keys import Keyspace

if TYPE_CHECKING:
    from streamq.app import App

KEY_TYPES: dict[str, str] = {
    "stream": "stream",
    "events": "stream",
    "dlq": "stream",
    "delayed": "zset",
    "job": "hash",
    "unique": "string",
    "lock": "string",
    "limit": "string",
    "slots": "zset",
    "parked": "zset",
    "cron": "hash",
    "deferred": "hash",
    "parents": "zset",
    "children": "set",
    "cancels": "zset",
    "partitions": "zset",
    "reclaim": "hash",
    "handout": "zset",
}
"""The Redis type (as TYPE names it) of each kind of key: ``streamq:{Q}:<kind>[:<name>]``."""
_SINGLE = frozenset(
    {"events", "dlq", "delayed", "cron", "deferred", "parents", "cancels", "partitions"}
)
"""Kinds that are one key each; the others are followed by a name."""
_BATCH = 1000


def expected_type(keys: Keyspace, key: str | bytes) -> str | None:
    """The Redis type the queue ``keys`` keeps at ``key``; None for a key it does not know."""
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    base = keys.events.removesuffix("events")  # "streamq:{Q}:"
    if not key.startswith(base):
        return None
    kind, colon, name = key[len(base) :].partition(":")
    if kind in _SINGLE:
        return KEY_TYPES[kind] if not colon else None
    return KEY_TYPES.get(kind) if name else None


def is_wrong_type(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc)


async def find_wrong_types(
    redis: Redis, keys: Keyspace, names: Iterable[str | bytes]
) -> list[WrongKeyType]:
    """The keys among ``names`` that exist with another type than streamq keeps there."""
    known = [(k, t) for k in dict.fromkeys(names) if (t := expected_type(keys, k)) is not None]
    found: list[WrongKeyType] = []
    for start in range(0, len(known), _BATCH):
        batch = known[start : start + _BATCH]
        async with redis.pipeline(transaction=False) as pipe:
            for key, _ in batch:
                pipe.type(key)
            types = cast(list[bytes | str], await pipe.execute())
        for (key, wanted), raw in zip(batch, types, strict=True):
            actual = raw.decode() if isinstance(raw, bytes) else raw
            if actual not in ("none", wanted):
                name = key.decode(errors="replace") if isinstance(key, bytes) else key
                found.append(WrongKeyType(name, wanted, actual))
    return found


async def explain(
    redis: Redis, keys: Keyspace, names: Iterable[str | bytes], exc: ResponseError
) -> ResponseError:
    """The WrongKeyType behind ``exc`` (a WRONGTYPE from a call on ``names``), else ``exc``."""
    try:
        found = await find_wrong_types(redis, keys, names)
    except RedisError:
        return exc  # the original error says more than a failed look-up
    return found[0] if found else exc


async def raise_named(
    redis: Redis, keys: Keyspace, names: Iterable[str | bytes], exc: ResponseError
) -> NoReturn:
    """Raise the WrongKeyType behind ``exc`` if one of ``names`` is it, else ``exc``."""
    named = await explain(redis, keys, names, exc)
    if named is exc:
        raise exc
    raise named from exc


def queue_keys(keys: Keyspace, priorities: Iterable[str]) -> list[str]:
    """The queue's own single keys: its streams, the events, the delayed set, the DLQ."""
    return [*(keys.stream(p) for p in priorities), keys.events, keys.delayed, keys.dlq]


@asynccontextmanager
async def wrong_types_named(app: App, job_keys: Iterable[str] = ()) -> AsyncIterator[None]:
    """A WRONGTYPE in the body becomes a WrongKeyType naming the queue key (or one of
    ``job_keys``) at fault. Costs nothing unless the body raises one."""
    try:
        yield
    except ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        names = [*queue_keys(app.keys, app.settings.priorities), *job_keys]
        await raise_named(await app.redis(), app.keys, names, exc)
