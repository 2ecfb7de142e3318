"""Unique jobs: at most one live job per key, with throttle and debounce modes.

``task.with_options(key="invoice-42")`` makes the job the one live job of
that key: a second enqueue while it is queued, scheduled, running or
retrying returns the first job's handle instead of adding one. The key is
free again once that job is final (succeeded, failed, dead, cancelled), or
``key_ttl`` seconds after. ``throttle=60``: the first enqueue wins for 60 s
from that enqueue, whatever became of its job. ``debounce=5``: the job
waits 5 s; an enqueue within that wait replaces its arguments and restarts
the wait, so the job runs once, with the last arguments, after a quiet 5 s.

The decision is the enqueue script's (``scripts/enqueue.lua``), so two
producers racing on one key, in any processes, produce one job. A key with
no TTL (while its job lives) is expired by the janitor's sweep once the job
is final (``sweep``): it never outlives its job by more than a sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from streamq.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamq.keys import Keyspace
    from streamq.scripts import Scripts

Mode = Literal["key", "throttle", "debounce"]
MAX_KEY_BYTES = 512
SWEEP_COUNT = 1000
"""SCAN's COUNT hint per sweep step: about how many keys one janitor pass examines."""
SWEEP_BATCH = 100


@dataclass(frozen=True, slots=True)
class Unique:
    key: str
    mode: Mode = "key"
    window_s: float = 0.0
    """'key': how long the key stays held after its job is final; 'throttle':
    how long it is held from the first enqueue; 'debounce': the job's wait."""

    @property
    def window_ms(self) -> int:
        return int(self.window_s * 1000)


def unique_option(
    key: str | None, key_ttl: float | None, debounce: float | None, throttle: float | None
) -> Unique | None:
    """The ``with_options`` arguments as one checked option (ConfigError if wrong)."""
    if key is None:
        if key_ttl is not None or debounce is not None or throttle is not None:
            raise ConfigError("key_ttl, debounce and throttle need a unique key (key=...)")
        return None
    if not isinstance(key, str) or not key:
        raise ConfigError(f"key must be a non-empty string, got {key!r}")
    if len(key.encode(errors="surrogatepass")) > MAX_KEY_BYTES:
        raise ConfigError(f"key must be at most {MAX_KEY_BYTES} bytes")
    given = [(n, v) for n, v in (("key_ttl", key_ttl), ("debounce", debounce),
                                 ("throttle", throttle)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise ConfigError(f"{given[0][0]} and {given[1][0]} cannot be combined")
    if not given:
        return Unique(key)
    name, value = given[0]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (name != "key_ttl" and value <= 0)
    ):
        sign = ">= 0" if name == "key_ttl" else "> 0"
        raise ConfigError(f"{name} must be a finite number of seconds {sign}, got {value!r}")
    mode: Mode = "key" if name == "key_ttl" else cast(Mode, name)
    return Unique(key, mode, float(value))


async def sweep(redis: Redis, scripts: Scripts, keys: Keyspace, cursor: int) -> tuple[int, int]:
    """One bounded step over the queue's unique keys: give each key whose job
    is final (or gone) the TTL it has left. Returns (next cursor, keys released).

    Throttle keys carry their own TTL and are skipped by the script.
    """
    cursor, found = await redis.scan(cursor, match=keys.unique_pattern(), count=SWEEP_COUNT)
    names = cast(list[bytes], found)
    released = 0
    for i in range(0, len(names), SWEEP_BATCH):
        batch = names[i : i + SWEEP_BATCH]
        holders = cast(list[bytes | None], await redis.mget(batch))
        held = [
            (name, holder, keys.job(holder.decode(errors="replace")))
            for name, holder in zip(batch, holders, strict=True)
            if holder is not None
        ]
        if held:
            released += await scripts.unique(held)
    return int(cursor), released
