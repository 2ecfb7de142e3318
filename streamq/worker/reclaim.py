"""Reclaim: messages idle past their task's visibility timeout come back to a worker.

Scanning a stream's PEL costs the server time in proportion to its size
(about 0.75 µs per pending entry). If every worker scanned, the cost would
grow with workers x PEL size; so per stream and janitor interval ONE worker
scans, gated in Redis (``reclaim.lua``): the first worker whose reclaim call
finds no gate starts a pass, walks the whole PEL in bounded pages (one
script call each, about a millisecond of server time), checks every entry
idle past the smallest timeout against its own task's timeout, and puts the
stale ones into the stream's hand-out. Every worker's reclaim call pops from
the hand-out (cheap when empty) and claims what it got with XCLAIM and the
task's own timeout as min-idle, so a heartbeat since the scan still wins.

A message is reclaimed within its own timeout plus about one interval: a
pass sees every entry, and the next one starts at most an interval after
the previous one (the scanner itself comes back then), or, when no entry
can become stale before then, at the earliest time one can (the script's
``due``): a PEL of live, heartbeated jobs costs a pass per two thirds of the
smallest visibility timeout, not one per interval. A scanner that dies mid-pass holds
the gate for the lease only; a popper that dies before claiming leaves the
message pending, and the next pass hands it out again.

Everything here is per Keyspace and priority stream: a partitioned queue
runs one Reclaimer per partition.
"""

from __future__ import annotations

from collections.abc import Mapping

from streamq.keys import GROUP, Keyspace
from streamq.scripts import Arg, Scripts
from streamq.settings import Settings

PAGE = 1000
"""PEL entries one script call walks at most (about a millisecond of server time)."""
LOOKUPS = 200
"""Entries one script call reads at most (those idle past the smallest timeout)."""
MIN_LEASE_MS = 1000
"""A pass in progress holds its gate this long at least after each page."""


class Reclaimer:
    """One queue's (one Keyspace's) reclaim for one consumer."""

    def __init__(
        self,
        scripts: Scripts,
        keys: Keyspace,
        settings: Settings,
        consumer: str,
        default_visibility_ms: int,
        visibility_ms: Mapping[str, int],
        page: int = PAGE,
        lookups: int = LOOKUPS,
    ) -> None:
        self._scripts = scripts
        self._keys = keys
        interval_ms = max(1, int(settings.janitor_interval_s * 1000))
        # Pages follow each other at once; a lease of two intervals (a second at
        # least) survives a busy event loop, and bounds a dead scanner's hold.
        lease_ms = max(MIN_LEASE_MS, 2 * interval_ms)
        min_ms = min([default_visibility_ms, *visibility_ms.values()])
        self._tail: list[Arg] = [
            min_ms, default_visibility_ms, interval_ms, lease_ms, page, lookups, len(visibility_ms),
        ]  # fmt: skip
        for task, ms in visibility_ms.items():
            self._tail += [task, ms]
        self._consumer = consumer
        self.pages = 0
        """Scan pages this reclaimer walked (tests and benchmarks count them)."""
        self.passes = 0
        """Passes over a whole PEL this reclaimer finished."""

    def script_keys(self, priority: str) -> list[str]:
        keys = self._keys
        return [
            keys.stream(priority), keys.dlq, keys.events,
            keys.reclaim_gate(priority), keys.handout(priority),
        ]  # fmt: skip

    async def reclaim(
        self, priority: str, count: int
    ) -> list[tuple[bytes, dict[bytes, bytes], int, bytes]]:
        """Up to ``count`` stale messages of one stream, claimed by this consumer, as
        (id, fields, delivery count, previous owner); scans first when it is this
        consumer's turn (``count`` may be 0: scan only)."""
        keys = self.script_keys(priority)
        head: list[Arg] = [GROUP, self._consumer, max(0, count), *self._tail]
        while True:
            state, popped = await self._scripts.reclaim_page(keys, head)
            if state != "skip":
                self.pages += 1
            if state != "more":
                break
        if state == "done":
            self.passes += 1
        if not popped:
            return []
        return await self._scripts.reclaim_claim(keys, head, popped, self._keys.job(""))
