"""Retry policy: when a failed job runs again, and whether it does at all.

Two ways to space retries: "full jitter" exponential backoff (the default),
uniform in ``[0, min(cap, base * 2**(attempt-1))]``, which spreads a burst of
failures out instead of retrying them in lockstep; or a fixed schedule,
``Retry(intervals=[10, 30, 60])`` as in RQ, where the n-th retry waits
``intervals[n-1]`` seconds (the last one repeating). ``compute_backoff`` and
``retry_delay_s`` are pure (the random source is a parameter), so their
rules are testable without waiting.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence

from streamq.errors import ConfigError

MAX_INTERVALS = 100
"""A schedule may list at most this many intervals (the last one repeats anyway);
it travels in the stream entry of every job that overrides it."""


class Retry(Exception):  # named for `raise Retry(delay=5)`, not RetryError
    """Retry a job: raised by a handler, or given to a task as its retry schedule.

    ``raise Retry(delay=5)`` in a handler retries the job after 5 seconds;
    ``raise Retry()`` uses the task's schedule (or its backoff). Either counts
    as an attempt; when ``max_retries`` is spent the job fails with this
    exception.

    ``@app.task(retry=Retry(intervals=[10, 30, 60]))`` (or
    ``with_options(retry=...)``) makes the n-th retry wait ``intervals[n-1]``
    seconds, the last interval repeating when ``max_retries`` is larger, with
    no jitter. Without an explicit ``max_retries`` the task then retries
    ``len(intervals)`` times. One class for both, as in RQ, so that the
    schedule and the exception that follows it read as one idea.

    Raises:
        ConfigError (a ValueError): a delay or an interval that is negative or
            not finite, an empty schedule, more than ``MAX_INTERVALS`` intervals,
            or both a delay and intervals.
    """

    def __init__(
        self,
        delay: float | None = None,
        reason: str = "retry requested",
        *,
        intervals: Iterable[float] | None = None,
    ) -> None:
        super().__init__(reason)
        if delay is not None and not _is_seconds(delay):
            raise ConfigError(f"Retry delay must be a finite number >= 0, got {delay!r}")
        if delay is not None and intervals is not None:
            raise ConfigError("Retry takes a delay or intervals, not both")
        self.delay = delay
        self.intervals: tuple[float, ...] | None = (
            None if intervals is None else check_intervals(intervals)
        )
        """Seconds before each retry, in order; None when no schedule was given."""


def _is_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def check_intervals(intervals: Iterable[float]) -> tuple[float, ...]:
    """The schedule as a tuple of seconds, or ConfigError saying what is wrong."""
    if isinstance(intervals, str | bytes) or not isinstance(intervals, Iterable):
        raise ConfigError(f"Retry intervals must be a list of seconds, got {intervals!r}")
    values = tuple(intervals)
    if not values:
        raise ConfigError("Retry intervals must list at least one delay")
    if len(values) > MAX_INTERVALS:
        raise ConfigError(
            f"Retry intervals may list at most {MAX_INTERVALS} delays, got {len(values)} "
            "(the last one repeats for further retries)"
        )
    for value in values:
        if not _is_seconds(value):
            raise ConfigError(
                f"Retry intervals must be finite numbers of seconds >= 0, got {value!r}"
            )
    return tuple(float(v) for v in values)


def scheduled_delay_s(intervals: Sequence[float], attempt: int) -> float:
    """The delay after failed attempt ``attempt`` (from 1): ``intervals[attempt-1]``,
    the last interval once the schedule is exhausted."""
    return intervals[min(max(attempt, 1), len(intervals)) - 1]


def compute_backoff(
    attempt: int,
    base_s: float,
    cap_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
    exponent = min(max(attempt - 1, 0), 62)  # 2**62 * base already exceeds any cap
    ceiling = min(cap_s, base_s * 2.0**exponent)
    return ceiling * rand()


def retry_delay_s(
    exc: BaseException | None,
    *,
    attempt: int,
    max_retries: int,
    retry_on: tuple[type[BaseException], ...],
    backoff_base_s: float,
    backoff_cap_s: float,
    rand: Callable[[], float] = random.random,
    intervals_s: Sequence[float] = (),
) -> float | None:
    """Seconds until the next attempt, or None when the job should fail now.

    ``exc`` is None for a timeout, which is always retryable. A ``Retry``
    raised by the handler picks its own delay (or its own schedule's); other
    exceptions retry only if they match ``retry_on``. The delay is then the
    schedule's (``intervals_s``, when given), else the backoff. ``attempt``
    counts from 1, so a job gets ``max_retries + 1`` attempts in all.
    """
    if attempt > max_retries:
        return None
    if isinstance(exc, Retry):
        if exc.delay is not None:
            return exc.delay
        if exc.intervals:
            return scheduled_delay_s(exc.intervals, attempt)
    elif exc is not None and not isinstance(exc, retry_on):
        return None
    if intervals_s:
        return scheduled_delay_s(intervals_s, attempt)
    return compute_backoff(attempt, backoff_base_s, backoff_cap_s, rand)
