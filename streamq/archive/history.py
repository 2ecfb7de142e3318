"""One history from the archive and the live stream.

Retention trims a stream from its oldest end only, and never past the
archive's watermark, so the history of a stream is: archived entries older
than the stream's first live entry, then the live stream. ``history`` reads
it that way in pages. Each page is one MULTI of two XRANGEs (the stream's
first entry, and the next page), so a trim that lands between two pages is
seen: the entries it removed come from the archive, and none is yielded
twice or skipped. Entries the archive also holds but that are still live
come from Redis, so an archive that overlaps the live stream costs nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import anyio.to_thread

from streamq.archive.core import has_text
from streamq.archive.format import IdKey, id_key, id_text, parse_range, predecessor, successor

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamq.archive.core import Archive

PAGE = 1000
Entry = tuple[str, dict[bytes, bytes]]


async def history(
    redis: Redis,
    archive: Archive | None,
    stream_key: str,
    start: str = "-",
    end: str = "+",
    *,
    page: int = PAGE,
    contains: str | None = None,
) -> AsyncIterator[Entry]:
    """Entries of the stream with ids in [start, end] (XRANGE bounds), archive first, in id order.

    Ids are ``"ms-seq"`` text; fields are bytes, as XRANGE returns them.
    Without an archive this is a paged XRANGE. ``contains``: only entries
    with a field name or value that is UTF-8 text containing this (see
    ``Archive.read``; a job id makes a story cheap to find in a long archive).
    """
    wanted = contains.encode() if contains is not None else None
    bounds = parse_range(start, end)
    if bounds is None:
        return
    low, high = bounds
    while low <= high:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xrange(stream_key, "-", "+", count=1)
            pipe.xrange(stream_key, id_text(low), id_text(high), count=page)
            first, entries = await pipe.execute()
        live_from: IdKey | None = id_key(first[0][0]) if first else None
        if archive is not None:
            # Not in Redis (any more): below the first live entry, or the whole
            # range when the stream is empty or gone.
            top = high if live_from is None else predecessor(live_from) if live_from > low else None
            if top is not None:
                async for entry in _archived(archive, stream_key, low, min(top, high), contains):
                    yield entry
        for raw_id, fields in entries:
            if wanted is None or has_text(fields, wanted):
                yield raw_id.decode(), fields
        if len(entries) < page:
            return
        last = id_key(entries[-1][0])
        if last >= high:
            return
        low = successor(last)


async def _archived(
    archive: Archive, stream_key: str, low: IdKey, high: IdKey, contains: str | None
) -> AsyncIterator[Entry]:
    """``archive.read`` run in a worker thread, in batches."""
    reader = archive.read(stream_key, id_text(low), id_text(high), contains=contains)
    try:
        while True:
            batch = await anyio.to_thread.run_sync(_take, reader, PAGE)
            for entry in batch:
                yield entry
            if len(batch) < PAGE:
                return
    finally:
        reader.close()


def _take(reader: Iterator[Entry], count: int) -> list[Entry]:
    batch = []
    for entry in reader:
        batch.append(entry)
        if len(batch) >= count:
            break
    return batch
