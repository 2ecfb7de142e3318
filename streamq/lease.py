"""Leader lease: one holder at a time for singleton duties, with expiry.

A holder that dies stops renewing and the lease expires after ``ttl_s``, so
another janitor takes over; one that pauses past the TTL simply loses it and
finds out at its next renewal. Duties guarded by the lease are themselves
atomic scripts, so a brief overlap of two leaders repeats no work.
"""

from __future__ import annotations

import secrets

import anyio

from streamq.scripts import Scripts


class Lease:
    def __init__(self, scripts: Scripts, key: str, ttl_s: float, owner: str) -> None:
        self._scripts = scripts
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = f"{owner}:{secrets.token_hex(4)}"
        self.held = False

    async def acquire_or_renew(self) -> bool:
        self.held = await self._scripts.lease(self.key, self.token, self.ttl_ms)
        return self.held

    async def release(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.held:
                await self._scripts.release(self.key, self.token)
            self.held = False
