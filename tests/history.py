"""Helpers for the history tests of ``stats`` and ``doctor``: fill a queue's history
streams quickly, and a server user that may not run MEMORY."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from streamq import App
from streamq.keys import GROUP

PASSWORD = "pw-for-history-tests"


async def fill_history(app: App, entries: int, *, events_cap: int | None = None) -> None:
    """``entries`` acked messages in the default stream and ``entries`` events.

    Written with XADD directly (fast, and no job hashes to bound), then read and
    acked by the group, so they are history the janitor's trim may cut. The events
    stream is capped on write as the scripts cap it (``MAXLEN ~``) when
    ``events_cap`` is given.
    """
    redis = await app.redis()
    stream, events = app.keys.stream("default"), app.keys.events
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(entries):
            pipe.xadd(stream, {"n": n})
            pipe.xadd(events, {"kind": "enqueued", "n": n}, maxlen=events_cap, approximate=True)
        await pipe.execute()
    read = await redis.xreadgroup(GROUP, "reader", {stream: ">"}, count=entries)
    ids = [entry_id for _stream, messages in read for entry_id, _fields in messages]
    assert len(ids) == entries
    await redis.xack(stream, GROUP, *ids)


@asynccontextmanager
async def user_without_memory(app: App, url: str) -> AsyncIterator[str]:
    """A server user that may run everything but MEMORY (as some managed services
    configure theirs); yields a URL that connects as it."""
    redis = await app.redis()
    user = f"nomemory-{uuid.uuid4().hex[:8]}"
    await redis.acl_setuser(
        user, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
        commands=["+@all", "-memory"],
    )  # fmt: skip
    try:
        parts = urlsplit(url)
        where = parts.netloc.rsplit("@", 1)[-1]
        yield urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{where}"))
    finally:
        await redis.acl_deluser(user)
