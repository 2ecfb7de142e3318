"""Job ids that carry their enqueue time: the UUIDv7 layout, written as 32 hex digits.

A job's story is read from the history forward from the moment its id names,
instead of from the beginning: with 48 bits of Unix milliseconds first, ids
also sort by enqueue time. The remaining 74 bits are random, as many as a
UUIDv7 allows, so ids stay unguessable and collision-free at any rate.
Custom ids (``with_options(job_id=...)``) and ids from before this layout
carry no time; readers fall back to the job hash or a full scan for those.
A schedule's tick jobs (``tick_job_id``) carry their tick's time.
"""

from __future__ import annotations

import os
import time

_VERSION = 7
_RAND_A_BITS, _RAND_B_BITS = 12, 62
_MIN_MS = 1_577_836_800_000  # 2020-01-01: older times are no streamq enqueue
_TICK_PREFIX = "cron:"


def new_job_id() -> str:
    """A fresh UUIDv7 as 32 lowercase hex digits (the format of every streamq job id)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10))
    rand_a = (rand >> _RAND_B_BITS) & 0xFFF
    rand_b = rand & ((1 << _RAND_B_BITS) - 1)
    value = (ms << 80) | (_VERSION << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return f"{value:032x}"


def tick_job_id(schedule: str, tick_ms: int) -> str:
    """The one id a schedule's job for one tick has: ``cron:<schedule>:<tick epoch ms>``.

    Deterministic, so enqueueing a tick twice adds nothing (``streamq.cron``).
    """
    return f"{_TICK_PREFIX}{schedule}:{tick_ms}"


def job_id_time_ms(job_id: str) -> int | None:
    """The enqueue time (epoch ms, the producer's clock) a job id carries, else None.

    For a schedule's tick job, the tick's time: its enqueue came at or after it.
    """
    if job_id.startswith(_TICK_PREFIX):
        digits = job_id.rpartition(":")[2]
        tick_ms = int(digits) if digits.isascii() and digits.isdigit() else 0
        return tick_ms if tick_ms >= _MIN_MS else None
    if len(job_id) != 32 or job_id[12] != "7" or job_id[16] not in "89ab":
        return None
    try:
        ms = int(job_id[:12], 16)
        int(job_id[12:], 16)
    except ValueError:
        return None
    return ms if ms >= _MIN_MS else None
