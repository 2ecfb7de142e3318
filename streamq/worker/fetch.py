"""Fetching: new messages for this consumer, strictly highest priority first.

First the ``fetch`` script reads the priority streams in order in one round
trip. Only when all are empty does the fetcher block (XREADGROUP BLOCK on
every stream), so an idle worker wakes as soon as a job arrives instead of
polling. The block stays well under the client's socket timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from streamq.keys import GROUP, Keyspace
from streamq.scripts import Entry, Scripts


@dataclass(frozen=True, slots=True)
class Message:
    stream: str
    priority: str
    msg_id: bytes
    fields: dict[bytes, bytes] | None
    deliveries: int
    """Redis's delivery count for this message when this worker received it."""


class Fetcher:
    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        keys: Keyspace,
        priorities: tuple[str, ...],
        consumer: str,
        block_ms: int,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._consumer = consumer
        self._block_ms = block_ms
        self._streams = [keys.stream(p) for p in priorities]
        self._priority_of = dict(zip(self._streams, priorities, strict=True))
        self._rank = {s: i for i, s in enumerate(self._streams)}

    async def ensure_groups(self) -> None:
        """Create the group on every stream at id 0 (not ``$``: keep earlier jobs)."""
        for stream in self._streams:
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def fetch(self, count: int) -> list[Message]:
        """Up to ``count`` new messages without blocking, highest priority first."""
        reply = await self._scripts.fetch(self._streams, GROUP, self._consumer, count)
        return self._messages(reply)

    async def wait(self) -> list[Message]:
        """Block until at least one stream has a new message (or the block expires).

        COUNT 1 per stream: this call only wakes the worker; the next ``fetch``
        takes the rest in priority order.
        """
        reply = await self._redis.xreadgroup(
            GROUP,
            self._consumer,
            dict.fromkeys(self._streams, ">"),
            count=1,
            block=self._block_ms,
        )
        raw = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None, reply)
        entries: list[tuple[str, list[Entry]]] = [
            (key.decode(), [(mid, fields or None) for mid, fields in items])
            for key, items in (raw or [])
        ]
        return self._messages(entries)

    def _messages(self, reply: list[tuple[str, list[Entry]]]) -> list[Message]:
        reply.sort(key=lambda item: self._rank[item[0]])
        return [
            # Only '>' reads come through here: a first delivery has count 1.
            Message(stream, self._priority_of[stream], msg_id, fields, 1)
            for stream, entries in reply
            for msg_id, fields in entries
        ]
