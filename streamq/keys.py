"""Keyspace: the only code that spells a Redis key.

Every key of one queue shares the hash tag ``{queue}``, so every script that
touches several of them runs on one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote

GROUP = "workers"
"""The consumer group on every priority stream."""


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str
    queue: str

    @property
    def _base(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}"

    def stream(self, priority: str) -> str:
        return f"{self._base}:stream:{priority}"

    def job(self, job_id: str) -> str:
        return f"{self._base}:job:{job_id}"

    @property
    def dlq(self) -> str:
        return f"{self._base}:dlq"

    @property
    def events(self) -> str:
        return f"{self._base}:events"

    @property
    def delayed(self) -> str:
        return f"{self._base}:delayed"

    @property
    def deferred(self) -> str:
        """Hash: the entry of each job waiting for its parents (``streamq.chains``)."""
        return f"{self._base}:deferred"

    @property
    def parents(self) -> str:
        """Zset: jobs that have children waiting for them."""
        return f"{self._base}:parents"

    def children(self, parent_id: str) -> str:
        return f"{self._base}:children:{parent_id}"

    @property
    def cron(self) -> str:
        """The hash of cron and periodic schedules: name -> the last tick handled (``cron.py``)."""
        return f"{self._base}:cron"

    def unique(self, key: str) -> str:
        return f"{self._base}:unique:{key}"

    def lock(self, name: str) -> str:
        return f"{self._base}:lock:{name}"

    def unique_pattern(self) -> str:
        """A SCAN pattern matching every unique key of this queue."""
        return self.unique("*").replace("{", "\\{").replace("}", "\\}")

    def limit(self, task: str, value: str | None = None) -> str:
        """A rate limit's state (GCRA): per task, or per value of its key argument."""
        return f"{self._base}:limit:{_limited(task, value)}"

    def slots(self, task: str, value: str | None = None) -> str:
        """A concurrency limit's holders (zset scored by expiry)."""
        return f"{self._base}:slots:{_limited(task, value)}"

    def parked(self, task: str, value: str | None = None) -> str:
        """Jobs deferred for a full ``slots`` zset, woken when a slot is released."""
        return f"{self._base}:parked:{_limited(task, value)}"

    @property
    def cancels(self) -> str:
        """Zset of cancel requests for running jobs: member job id, score the server's ms."""
        return f"{self._base}:cancels"

    def reclaim_gate(self, priority: str) -> str:
        """Hash with a TTL: a stream's reclaim pass in progress (owner, cursor) or the
        stamp until the next may start (``streamq.worker.reclaim``)."""
        return f"{self._base}:reclaim:{priority}"

    def handout(self, priority: str) -> str:
        """Zset with a TTL: a stream's stale messages found by the reclaim pass, for
        any worker to claim; score: when each became stale (server ms)."""
        return f"{self._base}:handout:{priority}"

    def job_pattern(self) -> str:
        """A SCAN pattern matching every job hash of this queue."""
        return self.job("*").replace("{", "\\{").replace("}", "\\}")

    def demo(self, name: str) -> str:
        """A key of the live demo (``streamq.demo_web``): its config and worker marks."""
        return f"{self._base}:demo:{_part(name)}"

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this queue (tests and ops)."""
        return f"{self._base}:*".replace("{", "\\{").replace("}", "\\}")

    @property
    def partitions(self) -> str:
        """Zset, in partition 0 only: member ``count`` scored by the largest partition
        count ever used (``streamq.partitions``), so workers drain every partition."""
        return f"{self._base}:partitions"

    def partition(self, index: int) -> Keyspace:
        """Partition ``index`` of this queue: its own hash tag, ``{queue#index}``
        (partition 0 is the queue's own, so one partition is the plain layout)."""
        return self if index == 0 else Keyspace(self.prefix, f"{self.queue}#{index}")


_MAX_PART = 120


def _part(text: str) -> str:
    """Any text as a key segment: percent-escaped (no ':', braces, '*' or '%' left
    raw, so segments cannot run into each other), or hashed when long."""
    escaped = quote(text, safe="-._~")
    if len(escaped) <= _MAX_PART:
        return escaped
    # '#' is always escaped above, so a hashed segment never equals an escaped one.
    return "#" + hashlib.sha256(text.encode()).hexdigest()


def _limited(task: str, value: str | None) -> str:
    return _part(task) if value is None else f"{_part(task)}:{_part(value)}"
