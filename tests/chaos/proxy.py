"""A loopback TCP proxy between a Redis client and valkey that loses replies on purpose.

It forwards bytes both ways. When the client sends an ``EVALSHA`` of a target
script (recognised by its SHA in the command bytes), the proxy may decide,
seeded, to lose that call's reply: it forwards the command, lets valkey run
it, and when valkey's answer arrives it closes both connections instead of
relaying it. The client sees a dropped connection after the command ran:
exactly the case where redis-py retries a command that already took effect.
At most ``max_consecutive`` calls of one script in a row are dropped, so a
retrying client always gets through.

``blackhole`` stops forwarding in both directions without closing anything
(a partition): connections stay open and silent until ``heal``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

_PROXY_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


@dataclass
class _Connection:
    armed: str | None = None
    """The target whose reply is to be lost: the next bytes from valkey are dropped."""


class ReplyDropProxy:
    def __init__(
        self,
        upstream_port: int,
        targets: Mapping[str, str],
        *,
        drop_probability: float,
        rng: random.Random,
        max_consecutive: int = 2,
    ) -> None:
        """``targets`` maps a name (for the counts) to a script's SHA1 hex."""
        self.upstream_port = upstream_port
        self._targets = {name: sha.encode() for name, sha in targets.items()}
        self._tail = max(len(sha) for sha in self._targets.values())
        self.drop_probability = drop_probability
        self._rng = rng
        self._max_consecutive = max_consecutive
        self._streak: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.connections = 0
        self.port = 0
        self._open = anyio.Event()
        self._open.set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        self._open = anyio.Event()

    def heal(self) -> None:
        self._open.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: SocketStream) -> None:
        self.connections += 1
        try:
            async with client:
                upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
                async with upstream, anyio.create_task_group() as tg:
                    conn = _Connection()
                    tg.start_soon(self._client_to_server, client, upstream, conn, tg.cancel_scope)
                    await self._server_to_client(upstream, client, conn)
                    tg.cancel_scope.cancel()
        except _PROXY_ERRORS:
            return  # either side went away: the other is closed with it

    def _decide(self, data: bytes) -> str | None:
        """One seeded decision per target present in ``data``: whose reply is lost, if any."""
        chosen = None
        for name, sha in self._targets.items():
            calls = data.count(sha)
            if not calls:
                continue
            self.seen[name] += calls
            drop = (
                chosen is None
                and self._streak[name] < self._max_consecutive
                and self._rng.random() < self.drop_probability
            )
            self._streak[name] = self._streak[name] + 1 if drop else 0
            chosen = name if drop else chosen
        return chosen

    async def _client_to_server(
        self,
        client: SocketStream,
        upstream: SocketStream,
        conn: _Connection,
        scope: anyio.CancelScope,
    ) -> None:
        tail = b""
        try:
            async for chunk in client:
                await self._open.wait()
                # Keep a tail so a SHA split across two reads is still seen (and
                # counted once: only matches that end in the new chunk count).
                window = tail + chunk
                hit = self._decide(window) if len(chunk) else None
                tail = window[-(self._tail - 1) :]
                if hit is not None and conn.armed is None:
                    conn.armed = hit
                await upstream.send(chunk)
        finally:
            scope.cancel()

    async def _server_to_client(
        self, upstream: SocketStream, client: SocketStream, conn: _Connection
    ) -> None:
        async for chunk in upstream:
            await self._open.wait()
            if conn.armed is not None:
                self.dropped[conn.armed] += 1
                return  # the command ran; its reply is lost with the connection
            await client.send(chunk)
