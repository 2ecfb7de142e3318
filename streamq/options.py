"""Per-job option overrides as stream-entry fields: the retry schedule and the result TTL.

A ``with_options(retry=..., result_ttl=...)`` copy of a task changes these
for its jobs only. The worker that runs such a job may have imported the
task with its registered options, so the override must travel in the job's
stream entry (as ``max_retries`` and ``timeout`` do): it survives retries,
the delayed set and a DLQ requeue, and ``streamq replay`` shows it.
Encoding lives here beside decoding so that both sides agree on one format.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from streamq.retry import MAX_INTERVALS

if TYPE_CHECKING:
    from streamq.scripts import Arg
    from streamq.task import TaskOptions

RETRY_INTERVALS_FIELD = "retry_intervals"
"""A JSON array of seconds, e.g. ``[0.2,0.4]``."""
RESULT_TTL_FIELD = "result_ttl"
"""Seconds, as a decimal number."""


def override_fields(options: TaskOptions, base: TaskOptions | None) -> list[Arg]:
    """Entry fields for the schedule and result TTL where ``options`` differ from
    the registered task's ``base`` (all that are set when there is none)."""
    fields: list[Arg] = []
    if options.retry_intervals_s and (
        base is None or options.retry_intervals_s != base.retry_intervals_s
    ):
        fields += [RETRY_INTERVALS_FIELD, json.dumps(list(options.retry_intervals_s))]
    if options.result_ttl_s is not None and (
        base is None or options.result_ttl_s != base.result_ttl_s
    ):
        fields += [RESULT_TTL_FIELD, repr(float(options.result_ttl_s))]
    return fields


def parse_intervals(raw: bytes) -> tuple[float, ...]:
    """The ``retry_intervals`` field's schedule; ValueError when it is not one."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        value = None
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= MAX_INTERVALS
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in value
        )
    ):
        raise ValueError(
            f"retry_intervals is not a list of 1 to {MAX_INTERVALS} finite seconds >= 0"
        )
    return tuple(float(v) for v in value)


def parse_result_ttl(raw: bytes) -> float:
    """The ``result_ttl`` field's seconds; ValueError when out of range."""
    value = float(raw)
    if not 0.001 <= value < math.inf:
        raise ValueError("result_ttl is not a finite number of seconds >= 0.001")
    return value
