"""Handler timeouts from one watcher task, not one event-loop timer per job.

``anyio.move_on_after`` arms an event-loop timer for every job and cancels it
when the job ends: for a short job that timer (and the second backend lookup
it needs) cost more than the rest of running it. The worker instead enters a
plain cancel scope per run and registers it here with its deadline; one task
sleeps until the nearest deadline of the runs still going and cancels the
scopes that reached theirs. A run that ends first just leaves the registry
(a dict entry, no timer). The scope is cancelled at its deadline as before
(the watcher wakes at the nearest one, and is woken early when a run starts
with a nearer deadline than it sleeps towards), so ``execute`` tells a timeout
by ``scope.cancelled_caught`` exactly as with a deadline of the scope's own.
"""

from __future__ import annotations

import math
import time

import anyio


class Deadlines:
    """The deadlines of running handlers (``time.monotonic()`` seconds)."""

    def __init__(self) -> None:
        self._scopes: dict[int, tuple[float, anyio.CancelScope]] = {}
        self._next = math.inf  # what the watcher sleeps towards
        self._wake: anyio.Event | None = None

    def watch(self, scope: anyio.CancelScope, timeout_s: float) -> None:
        """Cancel ``scope`` ``timeout_s`` from now unless ``forget`` comes first."""
        deadline = time.monotonic() + timeout_s
        self._scopes[id(scope)] = (deadline, scope)
        if deadline < self._next:
            self._next = deadline
            if self._wake is not None:
                self._wake.set()

    def forget(self, scope: anyio.CancelScope) -> None:
        self._scopes.pop(id(scope), None)

    def __len__(self) -> int:
        return len(self._scopes)

    async def run(self) -> None:
        """Cancel each watched scope at its deadline; runs until cancelled."""
        while True:
            self._wake = anyio.Event()
            now = time.monotonic()
            nearest = math.inf
            for key, (deadline, scope) in list(self._scopes.items()):
                if deadline <= now:
                    del self._scopes[key]
                    scope.cancel()
                elif deadline < nearest:
                    nearest = deadline
            self._next = nearest
            with anyio.move_on_after(None if nearest == math.inf else nearest - now):
                await self._wake.wait()
