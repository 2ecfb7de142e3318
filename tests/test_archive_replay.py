"""The archive as part of the history: the janitor fills it before it trims, and
``Replay`` reads it and the live streams as one (issue 12, point 3)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import streamq.janitor as janitor_module
from streamq import App, JobStatus, Settings
from streamq.archive import Archive
from streamq.janitor import Janitor
from streamq.replay import Replay
from tests.apps.slow import ADD, FAIL, register
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio


def archived_app(redis_url: str, archive: Path) -> App:
    settings = Settings(
        redis_url=redis_url, retention_s=0, archive=str(archive), archive_window_s=1.0
    )
    return register(App(queue_name(), settings=settings))


async def window_closed(app: App, seconds: float) -> None:
    """Wait (on the server's clock) until the archive window of now has ended."""
    redis = await app.redis()
    start_s, _ = await redis.time()

    async def later() -> bool:
        now_s, _ = await redis.time()
        return bool(now_s >= start_s + seconds + 1)

    await wait_until(later, timeout=10, description="the archive window to close")


async def test_the_janitor_archives_before_it_trims_and_replay_reads_both(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a trim with an archive, the history reads the same as before it.

    A job that failed and went to the DLQ: its events and messages are
    archived, then trimmed from Redis, and its story (after its hash expired)
    comes out of the archive exactly as it came out of Redis.
    """
    monkeypatch.setattr(janitor_module, "EVENTS_KEEP_S", 0.0)  # no waiter to keep events for
    app = archived_app(redis_url, tmp_path / "archive")
    async with app:
        # Enough entries for whole stream nodes (100 each): XTRIM ~ only drops whole nodes.
        jobs = await app.tasks[ADD].enqueue_many([(n, 1) for n in range(300)])
        bad = await app.enqueue(FAIL, "for the archive")
        ok = jobs[0]
        async with running_worker(app, concurrency=50):  # its janitor promotes the retry
            for job in jobs:
                await job.result(timeout=20)
            assert await app.job(bad.id).wait(timeout=10) == JobStatus.FAILED
        history = Replay(app)
        before_events = [r.as_dict() async for r in history.events()]
        before_messages = [r.as_dict() async for r in history.messages()]
        before_story = [r.as_dict() for r in await history.story(bad.id) if r.source != "job"]
        await window_closed(app, app.settings.archive_window_s)
        trimmed = await Janitor(app, "test").trim()
        redis = await app.redis()
        assert trimmed > 0
        assert await redis.xlen(app.keys.events) < len(before_events)
        archive = Archive(str(tmp_path / "archive"))
        assert await anyio.to_thread.run_sync(archive.watermark, app.keys.events)
        await redis.delete(app.keys.job(bad.id), app.keys.job(ok.id))  # result_ttl passed
        after = Replay(app)  # takes the archive from the App's settings
        assert [r.as_dict() async for r in after.events()] == before_events
        assert [r.as_dict() async for r in after.messages()] == before_messages
        assert [r.as_dict() for r in await after.story(bad.id)] == before_story
        live_only = Replay(app, archive=None)
        live_only.archive = None
        assert [r async for r in live_only.events()] != before_events
        await drop_queue(app)


async def test_without_an_archive_the_trim_is_not_held_back(redis_url: str) -> None:
    """No archive configured: retention trims as before (the archive is optional)."""
    app = register(App(queue_name(), settings=Settings(redis_url=redis_url, retention_s=0)))
    async with app:
        jobs = await app.tasks[ADD].enqueue_many([(n, 1) for n in range(300)])
        async with running_worker(app, janitor=False, concurrency=50):
            for job in jobs:
                await job.result(timeout=20)
        assert Replay(app).archive is None
        assert await Janitor(app, "test").trim() > 0
        await drop_queue(app)
