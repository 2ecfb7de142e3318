"""Retry policy: when a failed job runs again, and whether it does at all.

``compute_backoff`` is pure (the random source is a parameter) so its bounds
are testable without waiting. The delay it returns is "full jitter"
exponential backoff: uniform in ``[0, min(cap, base * 2**(attempt-1))]``,
which spreads a burst of failures out instead of retrying them in lockstep.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable


class Retry(Exception):  # named for `raise Retry(delay=5)`, not RetryError
    """Raise from a handler to retry the job after ``delay`` seconds.

    Counts as an attempt; when ``max_retries`` is spent the job fails with
    this exception. ``delay=None`` uses the task's backoff.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        if delay is not None and (not math.isfinite(delay) or delay < 0):
            raise ValueError(f"Retry delay must be a finite number >= 0, got {delay!r}")
        self.delay = delay


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
) -> float | None:
    """Seconds until the next attempt, or None when the job should fail now.

    ``exc`` is None for a timeout, which is always retryable. A ``Retry``
    raised by the handler picks its own delay; other exceptions retry only if
    they match ``retry_on``. ``attempt`` counts from 1, so a job gets
    ``max_retries + 1`` attempts in all.
    """
    if attempt > max_retries:
        return None
    if isinstance(exc, Retry):
        if exc.delay is not None:
            return exc.delay
    elif exc is not None and not isinstance(exc, retry_on):
        return None
    return compute_backoff(attempt, backoff_base_s, backoff_cap_s, rand)
