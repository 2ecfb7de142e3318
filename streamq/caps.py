"""Caps on the per-job options a stream entry carries (timeout, retries, schedule, TTL).

An entry's ``timeout``, ``max_retries``, ``retry_intervals`` and
``result_ttl`` override the task's options, so whoever can write the stream
could ask for a year-long timeout or a billion retries. A worker refuses an
entry beyond a cap (dead-lettered with a reason, never run) rather than
clamping it: a clamped job would run with options nobody asked for, while a
refused one is visible in the DLQ and can be requeued once the cap is raised.
Producers check the same caps at enqueue (``ConfigError``), so a job of ours
is never refused later. Options registered in code (``@app.task``) are
trusted and not capped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamq.envelope import Envelope
    from streamq.settings import Settings
    from streamq.task import TaskOptions


@dataclass(frozen=True, slots=True)
class JobCaps:
    timeout_s: float
    retries: int
    retry_interval_s: float
    result_ttl_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> JobCaps:
        return cls(
            settings.max_job_timeout_s,
            settings.max_job_retries,
            settings.max_job_retry_interval_s,
            settings.max_job_result_ttl_s,
        )

    def violation(
        self,
        timeout_s: float | None,
        max_retries: int | None,
        intervals: tuple[float, ...] | None,
        result_ttl_s: float | None,
    ) -> str | None:
        """What exceeds a cap, or None."""
        if timeout_s is not None and timeout_s > self.timeout_s:
            return f"timeout {timeout_s:g} s is over the cap of {self.timeout_s:g} s"
        if max_retries is not None and max_retries > self.retries:
            return f"max_retries {max_retries} is over the cap of {self.retries}"
        if intervals and max(intervals) > self.retry_interval_s:
            return (
                f"a retry interval of {max(intervals):g} s is over the cap of "
                f"{self.retry_interval_s:g} s"
            )
        if result_ttl_s is not None and result_ttl_s > self.result_ttl_s:
            return f"result_ttl {result_ttl_s:g} s is over the cap of {self.result_ttl_s:g} s"
        return None

    def entry_violation(self, env: Envelope) -> str | None:
        return self.violation(
            env.timeout_s, env.max_retries, env.retry_intervals_s, env.result_ttl_s
        )

    def options_violation(self, options: TaskOptions) -> str | None:
        return self.violation(
            options.timeout_s, options.max_retries, options.retry_intervals_s, options.result_ttl_s
        )
