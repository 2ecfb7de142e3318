"""Chained children start when their parent ends, not at the janitor's next pass.

``chain.lua`` flags a parent's hash when a child waits on it, and
``complete.lua`` tells the worker recording that parent's final outcome
(reply 3). The outcome writer hands those parent ids here, and
``ChildRelease`` settles their children (``chains.settle_parents``: queued
when every parent succeeded, dead-lettered naming one that did not) in the
background, so the writer's round trips never wait for it. The janitor still
settles every final parent each pass: this only makes the common case quick,
and settling a child twice changes nothing.
"""

from __future__ import annotations

from typing import Any

import anyio
from redis.exceptions import RedisError

from streamq import chains
from streamq.app import App

BATCH = 200
"""Parents settled per round."""


class ChildRelease:
    def __init__(self, app: App, log: Any) -> None:
        self._app = app
        self._log = log
        self._parents: dict[str, None] = {}  # insertion-ordered, without repeats
        self._wake = anyio.Event()

    def note(self, parents: list[str]) -> None:
        """These jobs just ended, and children wait on them."""
        self._parents.update(dict.fromkeys(parents))
        self._wake.set()

    async def run(self) -> None:
        """Settle the noted parents' children; runs until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._parents:
                batch = list(self._parents)[:BATCH]
                for parent in batch:
                    del self._parents[parent]
                try:
                    await chains.settle_parents(self._app, batch)
                except RedisError as exc:
                    self._log.warning(
                        "chained children not released; the janitor will", error=str(exc)
                    )
