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

from streamq.errors import ConfigError, EnqueueError, QueueFull
from streamq.scripts import ENQUEUE_EXPECTED, Arg, Scripts

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamq.app import App
    from streamq.keys import Keyspace

Mode = Literal["key", "throttle", "debounce"]
MAX_KEY_BYTES = 512
SWEEP_COUNT = 1000
"""SCAN's COUNT hint per sweep step: about how many keys one janitor pass examines."""
SWEEP_BATCH = 100
# enqueue.lua's replies for a unique key: refused (the queue is full), held by a
# job, a debounce replaced the waiting job, and "call again naming this job".
_FULL, _HELD, _REPLACED, _ASK = -1, 2, 3, -3
ROUNDS = 5
"""Calls one unique enqueue makes at most while the key keeps changing hands."""


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


async def enqueue_unique(
    app: App, scripts: Scripts, unique: Unique, job_key: str, call: tuple[list[str], list[Arg]]
) -> str | None:
    """Enqueue one job (hash ``job_key``) under a unique key: None when it was added,
    else the id of the job that holds the key (the caller returns that job's handle).

    The script needs the holder's hash among its keys, so a first call that
    finds the key held by a job it was not told of answers with that job's
    id, and the next call names it; the key can change hands in between,
    hence a few rounds (each one a full check in the script).
    """
    keys, args = call
    expected = ""
    for _ in range(ROUNDS):
        keys[-2:] = [app.keys.unique(unique.key), app.keys.job(expected) if expected else job_key]
        args[ENQUEUE_EXPECTED] = expected
        if app.signer is not None:
            args[-1] = Scripts.replacement_signature(args, app.signer)
        ((code, value),) = await scripts.enqueue((keys, args))
        if code == _FULL:
            raise QueueFull(app.name, int(value), app.settings.max_pending or 0, [])
        if code not in (_HELD, _REPLACED, _ASK):
            return None
        holder = value.decode() if isinstance(value, bytes) else str(value)
        if code != _ASK:
            return holder
        expected = holder
    raise EnqueueError(f"unique key {unique.key!r} changed hands {ROUNDS} times during one enqueue")


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
