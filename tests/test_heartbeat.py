"""Heartbeat: resets the idle time of held messages, reports (once) the ones it lost.

These drive ``Heartbeat.beat()`` directly against a real server; the
end-to-end property (a long job is never reclaimed) is
tests/invariants/test_6_heartbeats.py.
"""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from streamq import App
from streamq.keys import GROUP
from streamq.worker.fetch import Fetcher, Message
from streamq.worker.heartbeat import Heartbeat
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio


async def hold(app: App, consumer: str, count: int) -> tuple[Fetcher, list[Message]]:
    @app.task(name="t")
    async def t() -> None: ...

    await t.enqueue_many([()] * count)
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, consumer, 100)
    await fetcher.ensure_groups()
    return fetcher, await fetcher.fetch(count)


async def pel(app: App, message: Message) -> dict[str, object]:
    redis = await app.redis()
    (entry,) = await redis.xpending_range(message.stream, GROUP, message.msg_id, message.msg_id, 1)
    return dict(entry)


async def test_beat_resets_idle_time_without_adding_a_delivery(app: App) -> None:
    """A beat brings every held message's idle time back to ~0; delivery counts stay 1.

    The messages are left to idle past 150 ms first. A heartbeat that used
    XCLAIM without JUSTID (or re-read with XREADGROUP) would add a delivery
    each beat, and a long job would reach max_deliveries while healthy.
    """
    fetcher, messages = await hold(app, "w", 3)
    beat = Heartbeat(await app.scripts(), fetcher.streams, "w", 0.05, app.name)
    for message in messages:
        beat.hold(message)

    async def idle_a_while() -> bool:
        return all([int((await pel(app, m))["time_since_delivered"]) >= 150 for m in messages])

    await wait_until(idle_a_while, 5, "the messages to idle 150 ms")
    for _ in range(3):
        await beat.beat()
    for message in messages:
        entry = await pel(app, message)
        assert int(entry["time_since_delivered"]) < 150
        assert entry["times_delivered"] == 1
        assert entry["consumer"] == b"w"
    assert beat.lost == set()


async def test_beat_reports_a_lost_message_once_and_keeps_the_rest(app: App) -> None:
    """A message another consumer claimed is reported lost, once; the others still beat.

    The lost message stays with its new owner (the beat does not steal it
    back); the warning is logged once however many beats follow, and
    ``release`` forgets both the message and its lost mark.
    """
    fetcher, (kept, taken) = await hold(app, "w", 2)
    redis = await app.redis()
    with capture_logs() as logs:
        beat = Heartbeat(await app.scripts(), fetcher.streams, "w", 0.05, app.name)
        beat.hold(kept)
        beat.hold(taken)
        await redis.xclaim(taken.stream, GROUP, "thief", 0, [taken.msg_id])
        for _ in range(3):
            await beat.beat()
    lost_logs = [entry for entry in logs if "no longer held" in entry["event"]]
    assert len(lost_logs) == 1
    assert lost_logs[0]["msg_id"] == taken.msg_id.decode()
    # info, not warning: a message acked while the beat was in flight reads the
    # same; the writer's "job lost ownership" warning is the authoritative one.
    assert lost_logs[0]["log_level"] == "info"
    assert beat.lost == {(taken.stream, taken.msg_id)}
    assert (await pel(app, taken))["consumer"] == b"thief"
    assert (await pel(app, kept))["consumer"] == b"w"

    beat.release(taken.stream, taken.msg_id)
    assert beat.lost == set()
    assert set(beat.held) == {(kept.stream, kept.msg_id)}


async def test_beat_with_nothing_held_sends_nothing(app: App) -> None:
    """An idle worker's heartbeat costs no round trip (the script is not called)."""
    calls: list[object] = []

    class CountingScripts:
        async def heartbeat(self, *args: object) -> list[bool]:
            calls.append(args)
            return []

    streams = [app.keys.stream(p) for p in app.settings.priorities]
    idle = Heartbeat(CountingScripts(), streams, "w", 0.05, app.name)  # type: ignore[arg-type]
    await idle.beat()
    assert calls == []
