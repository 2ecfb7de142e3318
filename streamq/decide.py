"""What becomes of a job: plain functions of its envelope, how it ran and its options.

The worker only moves messages; these decide. ``admit`` says, before a
handler runs, whether the message must go to the DLQ instead (delivered too
often); ``decide`` turns a finished execution into succeeded, retry (with
its delay) or failed. Neither touches Redis, so every rule is testable alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from streamq.retry import retry_delay_s

if TYPE_CHECKING:
    from streamq.envelope import Envelope
    from streamq.settings import Settings
    from streamq.task import TaskOptions
    from streamq.worker.execute import Execution


@dataclass(frozen=True, slots=True)
class Decision:
    status: Literal["succeeded", "retry", "failed"]
    delay_s: float | None = None
    """For 'retry': seconds until the next attempt."""


SUCCEEDED = Decision("succeeded")
FAILED = Decision("failed")


def max_retries_for(envelope: Envelope, options: TaskOptions | None, default: int) -> int:
    """The entry's own override, else the task's option, else the App's default."""
    if envelope.max_retries is not None:
        return envelope.max_retries
    return options.max_retries if options is not None else default


def retry_intervals_for(envelope: Envelope, options: TaskOptions | None) -> tuple[float, ...]:
    """The entry's own retry schedule, else the task's (empty: the backoff)."""
    if envelope.retry_intervals_s is not None:
        return envelope.retry_intervals_s
    return options.retry_intervals_s if options is not None else ()


def result_ttl_for(envelope: Envelope | None, options: TaskOptions | None, default: float) -> float:
    """Seconds a finished job's hash is kept: the entry's override, else the task's
    option, else the App's ``result_ttl_s``."""
    if envelope is not None and envelope.result_ttl_s is not None:
        return envelope.result_ttl_s
    if options is not None and options.result_ttl_s is not None:
        return options.result_ttl_s
    return default


def admit(
    envelope: Envelope, options: TaskOptions | None, deliveries: int, settings: Settings
) -> str | None:
    """Why this delivery must go to the DLQ without running, or None to run it.

    Past ``max_deliveries`` (default: max_retries + 2) the message has been
    handed out and lost by workers that crashed or stalled on it often enough.
    """
    limit = settings.max_deliveries or max_retries_for(envelope, options, settings.max_retries) + 2
    if deliveries > limit:
        return f"delivered {deliveries} times; max_deliveries is {limit}"
    return None


def decide(
    execution: Execution,
    *,
    attempt: int,
    max_retries: int,
    options: TaskOptions,
    intervals_s: Sequence[float] = (),
) -> Decision:
    """Succeeded, retry after a delay, or failed (to the DLQ) for good.

    ``intervals_s`` is the job's retry schedule (``retry_intervals_for``); empty,
    the task's backoff spaces the retries.
    """
    if execution.ok:
        return SUCCEEDED
    if not execution.retryable:
        return FAILED
    delay_s = retry_delay_s(
        execution.exception,
        attempt=attempt,
        max_retries=max_retries,
        retry_on=options.retry_on,
        backoff_base_s=options.backoff_base_s,
        backoff_cap_s=options.backoff_cap_s,
        intervals_s=intervals_s,
    )
    return FAILED if delay_s is None else Decision("retry", delay_s)
