"""A child that exports one stream into an archive, to be SIGKILLed mid-way.

``python -m tests.apps.archive_export REDIS_URL STREAM LOCATION WINDOW_S STOP``

STOP says where the export stops (sleeps, printing a line, until killed):

- ``index``: right after the first segment is in place, before the index
  names it (the crash between the two writes);
- ``segment``: in the middle of the first segment, after some of its entries
  went to the temporary file;
- ``none``: nowhere; it prints ``call <n>`` after each export call (of
  2,000 entries) and is killed wherever the next call is.

It prints ``exported <n>`` if it is not killed first, and waits to be killed.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio
from redis.asyncio import Redis

from streamq.archive import Archive, core, writer


def _stop(what: str) -> None:
    print(f"stopped: {what}", flush=True)  # noqa: T201 - the test waits for this line
    while True:
        time.sleep(1)


def install(stop: str) -> None:
    if stop == "index":
        original_write_index = core.Archive.write_index

        def write_index(self: core.Archive, stream_key: str, segments: Any) -> None:
            _stop("between segment and index")
            original_write_index(self, stream_key, segments)

        core.Archive.write_index = write_index  # type: ignore[method-assign]
    elif stop == "segment":
        original_flush = writer._SegmentFile.flush

        def flush(self: writer._SegmentFile) -> None:
            original_flush(self)
            if self.count:
                self.gzip.flush()
                self.pending.file.flush()
                _stop("in a segment")

        writer._SegmentFile.flush = flush  # type: ignore[method-assign]


async def main(url: str, stream: str, location: str, window_s: float, stop: str) -> None:
    install(stop)
    redis = Redis.from_url(url)
    archive = Archive(location, window_s=window_s)
    print("exporting", flush=True)  # noqa: T201
    total = 0
    while True:
        result = await archive.export(redis, stream, max_entries=2_000)
        total += result.entries
        print(f"call {total}", flush=True)  # noqa: T201
        if result.done:
            break
    await redis.aclose()
    _stop(f"exported {total}")  # a kill that comes late still finds it running


if __name__ == "__main__":
    url, stream, location, window, stop = sys.argv[1:6]
    anyio.run(main, url, stream, location, float(window), stop)
