"""C8: a few stale entries behind ten thousand fresh ones are all reclaimed in one pass.

XAUTOCLAIM examines at most COUNT x 10 PEL entries per call, so a janitor that
makes one XAUTOCLAIM call per pass leaves stale entries that sit behind many
fresh ones waiting for many passes. streamq's reclaim script finds candidates
with ``XPENDING … IDLE`` instead, over the whole PEL. Here 10,000 entries are
pending to a live consumer (fresh: idle about 0) and 5 to a dead one with an
idle time far past the visibility timeout (set with ``XCLAIM … IDLE``), one of
them the very last entry of the PEL. One ``Fetcher.reclaim`` call must return
exactly those 5, each with its delivery count raised by the claim.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import pytest

from streamq import App
from streamq.keys import GROUP
from streamq.worker.fetch import Fetcher
from tests.apps.chaos_app import WORK, Ledger, chaos_settings, register
from tests.chaos.conftest import Report
from tests.chaos.support import rng, scaled, valkey_server
from tests.conftest import queue_name

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

FRESH = scaled(10_000, 10_000)
STALE = 5
VIS_S = 60.0
STALE_IDLE_MS = 10 * 60 * 1000


async def test_c8_stale_entries_behind_a_deep_pel_are_reclaimed_in_one_call(
    tmp_path: Path, report: Report
) -> None:
    random = rng("C8")
    async with valkey_server(tmp_path / "valkey") as server:
        app = register(
            App(queue_name(), settings=chaos_settings(server.url, VIS_S, 1.0)), Ledger(None, "")
        )
        async with app:
            redis = await app.redis()
            task = app.tasks[WORK]
            total = FRESH + STALE
            for start in range(0, total, 1000):
                await task.enqueue_many(
                    [(f"k{i}", 0) for i in range(start, min(total, start + 1000))]
                )
            stream = app.keys.stream(task.options.priority)
            read = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                await redis.xreadgroup(GROUP, "alive", {stream: ">"}, count=total),
            )
            ids = [msg_id for msg_id, _ in read[0][1]]
            assert len(ids) == total
            stale = {ids[-1], *random.sample(ids[:-1], STALE - 1)}
            for msg_id in stale:
                await redis.xclaim(
                    stream, GROUP, "dead", 0, [msg_id], idle=STALE_IDLE_MS, justid=True
                )
            fetcher = Fetcher(redis, await app.scripts(), app.keys, app.settings, "reclaimer", 100)
            await fetcher.ensure_groups()  # as Worker.run does: every priority stream exists
            began = time.perf_counter()
            got = await fetcher.reclaim(16)
            call_ms = (time.perf_counter() - began) * 1000
            positions = sorted(ids.index(msg_id) for msg_id in stale)

    report(
        "C8",
        fresh=FRESH, stale=STALE, stale_positions=positions, reclaimed_in_one_call=len(got),
        reclaimed_are_the_stale=({m.msg_id for m in got} == stale),
        deliveries=sorted({m.deliveries for m in got}), call_ms=round(call_ms, 1),
    )  # fmt: skip
    assert {m.msg_id for m in got} == stale
    assert all(m.deliveries == 2 for m in got)
    assert all(m.fields and m.fields[b"task"] == WORK.encode() for m in got)
