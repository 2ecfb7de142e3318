"""Heartbeats: keep the messages this worker holds from being reclaimed.

Every held message (running, waiting for a slot, or waiting for its outcome
to be written) gets its idle time reset every third of the smallest
visibility timeout, by a script that first checks the message is still
pending to this consumer (DESIGN.md invariant 6). So the visibility timeout
bounds how long a crashed worker's jobs wait, not how long a job may run.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from redis.exceptions import RedisError

from streamq.keys import GROUP
from streamq.logging import get_logger
from streamq.scripts import Scripts
from streamq.worker.fetch import Message

MessageKey = tuple[str, bytes]


class Heartbeat:
    def __init__(
        self, scripts: Scripts, streams: Sequence[str], consumer: str, interval_s: float, queue: str
    ) -> None:
        self._scripts = scripts
        self._streams = list(streams)
        self._index = {s: i for i, s in enumerate(self._streams)}
        self._consumer = consumer
        self.interval_s = interval_s
        self.held: dict[MessageKey, Message] = {}
        self.lost: set[MessageKey] = set()
        self._log = get_logger(queue=queue, worker=consumer)

    def hold(self, message: Message) -> None:
        self.held[(message.stream, message.msg_id)] = message

    def release(self, stream: str, msg_id: bytes) -> None:
        self.held.pop((stream, msg_id), None)
        self.lost.discard((stream, msg_id))

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.interval_s)
            await self.beat()

    async def beat(self) -> None:
        messages = list(self.held.values())
        if not messages:
            return
        try:
            alive = await self._scripts.heartbeat(
                self._streams,
                GROUP,
                self._consumer,
                [(self._index[m.stream], m.msg_id) for m in messages],
            )
        except RedisError as exc:
            self._log.warning("heartbeat failed; retrying next interval", error=str(exc))
            return
        for message, ok in zip(messages, alive, strict=True):
            key = (message.stream, message.msg_id)
            if not ok and key in self.held and key not in self.lost:
                self.lost.add(key)
                # Also seen for a message acked while this beat was in flight;
                # the outcome writer's "job lost ownership" is the authoritative one.
                self._log.info(
                    "heartbeat: message no longer held by this worker",
                    msg_id=message.msg_id.decode(),
                    stream=message.stream,
                )
