"""Rate and concurrency limits: what a task declares, checked at decoration.

``@app.task(limit=Limit(rate="100/min", key="customer_id"), concurrency=5)``
caps how fast a task's jobs may start, and how many may run at once, across
every worker of the queue. Redis enforces both, with the server's clock, one
script each (``scripts/rate.lua``: GCRA; ``scripts/slot_acquire.lua``: a
semaphore zset). A job that may not start yet goes back to the delayed set
(``scripts/defer.lua``); that is neither an attempt nor a delivery. The
worker's side lives in ``streamq.worker.limited``.

Rate strings: ``"<count>/<period>"``, the period a unit optionally preceded
by a number: ``"10/s"``, ``"5/second"``, ``"100/min"``, ``"1000/h"``,
``"2/5s"``, ``"50/1.5m"``, ``"10000/day"``.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamq.errors import ConfigError

__all__ = ["Limit", "LimitPolicy", "Rate", "key_value", "parse_rate"]

_UNITS_MS = {
    "ms": 1, "s": 1000, "sec": 1000, "second": 1000, "seconds": 1000,
    "m": 60_000, "min": 60_000, "minute": 60_000, "minutes": 60_000,
    "h": 3_600_000, "hr": 3_600_000, "hour": 3_600_000, "hours": 3_600_000,
    "d": 86_400_000, "day": 86_400_000, "days": 86_400_000,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` starts per ``period_ms``."""

    count: int
    period_ms: float

    @property
    def interval_us(self) -> float:
        """The spacing between starts once the burst is spent (GCRA's emission interval)."""
        return self.period_ms * 1000 / self.count


def parse_rate(text: str) -> Rate:
    """``"100/min"`` → Rate(100, 60000). ConfigError for anything else."""
    match = _RATE.match(text.lower()) if isinstance(text, str) else None
    if match is None or match.group(3) not in _UNITS_MS:
        raise ConfigError(
            f"rate must look like '10/s', '100/min', '1000/h' or '2/5s', got {text!r}"
        )
    count, number, unit = int(match.group(1)), match.group(2), match.group(3)
    period_ms = float(number or 1) * _UNITS_MS[unit]
    if count < 1 or period_ms < 1:
        raise ConfigError(f"rate needs a count >= 1 per a period >= 1 ms, got {text!r}")
    return Rate(count, period_ms)


@dataclass(frozen=True, slots=True)
class Limit:
    """A task's limits, shared by every worker of the queue.

    Args:
        rate: starts per period (``"100/min"``); the grammar is in the module docstring.
        key: the name of a handler argument whose value partitions the limits:
            each value (each customer) gets its own rate and concurrency. None:
            one limit for the whole task.
        burst: starts allowed at once after an idle spell (default: the rate's
            count). Over any span of t seconds, at most ``burst + rate * t`` start.
        concurrency: jobs running at once, per key value when ``key`` is given,
            else per task (the task option ``concurrency=`` is always per task;
            when both apply, a job needs a slot of each).
    """

    rate: str | None = None
    key: str | None = None
    burst: int | None = None
    concurrency: int | None = None
    parsed_rate: Rate | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rate is None and self.concurrency is None:
            raise ConfigError("a Limit needs a rate, a concurrency, or both")
        if self.rate is not None:
            object.__setattr__(self, "parsed_rate", parse_rate(self.rate))
        elif self.burst is not None:
            raise ConfigError("burst needs a rate")
        if self.burst is not None and not _positive_int(self.burst):
            raise ConfigError(f"burst must be an integer >= 1, got {self.burst!r}")
        if self.concurrency is not None and not _positive_int(self.concurrency):
            raise ConfigError(f"concurrency must be an integer >= 1, got {self.concurrency!r}")
        if self.key is not None and (not isinstance(self.key, str) or not self.key.isidentifier()):
            raise ConfigError(f"key must name a handler argument, got {self.key!r}")

    @property
    def effective_burst(self) -> int:
        assert self.parsed_rate is not None
        return self.burst if self.burst is not None else self.parsed_rate.count


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """A task's limits as the worker applies them (built once per task)."""

    task: str
    rate: Rate | None
    burst: int
    key: str | None
    task_concurrency: int | None
    """Slots of the whole task (``concurrency=`` and a keyless ``Limit.concurrency``)."""
    key_concurrency: int | None
    """Slots per key value (``Limit(key=..., concurrency=...)``)."""
    signature: inspect.Signature | None = None

    @classmethod
    def of(
        cls,
        task: str,
        fn: Callable[..., Any],
        limit: Limit | None,
        concurrency: int | None,
    ) -> LimitPolicy | None:
        """The policy of a task, or None when it has no limits (the worker then pays nothing).

        Raises ConfigError when ``limit.key`` is not a named parameter of ``fn``.
        """
        if concurrency is not None and not _positive_int(concurrency):
            raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if limit is not None and not isinstance(limit, Limit):
            raise ConfigError(f"limit must be a streamq.Limit, got {limit!r}")
        if limit is None and concurrency is None:
            return None
        key = limit.key if limit is not None else None
        signature = None
        if key is not None:
            signature = inspect.signature(fn)
            param = signature.parameters.get(key)
            named = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            if param is None or param.kind in named:
                raise ConfigError(
                    f"Limit(key={key!r}) names no parameter of {task!r}; "
                    f"its parameters are {list(signature.parameters)}"
                )
        task_slots = [c for c in (concurrency,) if c is not None]
        key_slots = None
        if limit is not None and limit.concurrency is not None:
            if key is None:
                task_slots.append(limit.concurrency)
            else:
                key_slots = limit.concurrency
        rate = limit.parsed_rate if limit is not None else None
        return cls(
            task=task,
            rate=rate,
            burst=limit.effective_burst if limit is not None and rate is not None else 0,
            key=key,
            task_concurrency=min(task_slots) if task_slots else None,
            key_concurrency=key_slots,
            signature=signature,
        )

    def value(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """The key argument's value in this call, as text (None: no key)."""
        if self.key is None or self.signature is None:
            return None
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return key_value(bound.arguments.get(self.key))


def key_value(value: Any) -> str:
    """A key argument's value as text: strings as they are, anything else as compact JSON.

    ``Keyspace`` escapes (or hashes) it into the key, so any text is safe.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
