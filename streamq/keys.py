"""Keyspace: the only code that spells a Redis key.

Every key of one queue shares the hash tag ``{queue}``, so every script that
touches several of them runs on one Redis Cluster slot.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def unique(self, key: str) -> str:
        return f"{self._base}:unique:{key}"

    def lock(self, name: str) -> str:
        return f"{self._base}:lock:{name}"

    @property
    def cancels(self) -> str:
        """Zset of cancel requests for running jobs: member job id, score the server's ms."""
        return f"{self._base}:cancels"

    def job_pattern(self) -> str:
        """A SCAN pattern matching every job hash of this queue."""
        return self.job("*").replace("{", "\\{").replace("}", "\\}")

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this queue (tests and ops)."""
        return f"{self._base}:*".replace("{", "\\{").replace("}", "\\}")
