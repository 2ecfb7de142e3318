"""Replay: the retained history answers "what happened to job X, and what else failed"."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from streamq import App, ConfigError, JobStatus
from streamq.replay import HistoryRecord, Replay, parse_bound
from tests.apps.process import streamq_child
from tests.apps.slow import ADD, FAIL, register
from tests.conftest import drop_queue, queue_name, running_worker, subprocess_env, wait_until

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


def test_parse_bound() -> None:
    assert parse_bound("2026-11-01") == "1793491200000-0"
    assert parse_bound("2026-11-01", end=True) == "1793577599999-18446744073709551615"
    assert parse_bound("2026-11-01T12:00:00+00:00") == "1793534400000-0"
    assert parse_bound("1793534400000-5") == "1793534400000-5"
    assert parse_bound(1793534400000) == "1793534400000-0"
    assert parse_bound(dt.date(2026, 11, 1)) == "1793491200000-0"
    assert parse_bound(None) is None
    with pytest.raises(ConfigError):
        parse_bound("last tuesday")


def test_parse_bound_keeps_to_what_a_stream_id_can_hold() -> None:
    """Bounds past 64 bits or before 1970 are ConfigErrors, not Redis errors later."""
    assert parse_bound("9999-12-31", end=True) == "253402300799999-18446744073709551615"
    assert parse_bound("18446744073709551615") == "18446744073709551615-0"
    assert parse_bound("0-0") == "0-0"
    for bad in ("18446744073709551616", "1-18446744073709551616", "1969-12-31", -1,
                2**64, "1969-12-31T23:59:59+00:00", dt.date(1, 1, 1)):  # fmt: skip
        with pytest.raises(ConfigError):
            parse_bound(bad)


def test_a_record_keeps_its_own_id_apart_from_the_job_id_field() -> None:
    """A message's ``id`` field is the job id; it must not replace the entry id."""
    record = HistoryRecord("dlq", "1793534400000-3", 1793534400000, "dead", "j1", "t",
                           {"id": "j1", "task": "t", "dlq_reason": "failed"})  # fmt: skip
    assert record.as_dict() == {
        "source": "dlq", "id": "1793534400000-3", "time": "2026-11-01T12:00:00.000+00:00",
        "kind": "dead", "job_id": "j1", "task": "t", "dlq_reason": "failed",
    }  # fmt: skip


async def run_mixed(app: App) -> tuple[str, str]:
    ok = await app.enqueue(ADD, 1, 2)
    bad = await app.enqueue(FAIL, "broken on purpose")
    async with running_worker(app):
        await ok.result(timeout=10)
        assert await app.job(bad.id).wait(timeout=10) == JobStatus.FAILED
    return ok.id, bad.id


async def test_story_of_one_job_in_order(redis_url: str) -> None:
    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        _, bad = await run_mixed(app)
        story = await Replay(app).story(bad)
        kinds = [(r.source, r.kind) for r in story]
        assert kinds[0] == ("message", "message")
        assert ("event", "enqueued") in kinds and ("event", "retried") in kinds
        assert ("dlq", "dead") in kinds and kinds[-1] == ("job", "failed")
        assert [r.ts_ms for r in story[:-1]] == sorted(r.ts_ms for r in story[:-1])
        attempts = [r.fields.get("attempt") for r in story if r.source == "message"]
        assert attempts == ["1", "2"]
        await drop_queue(app)


async def test_filters_by_task_kind_status_and_time(redis_url: str) -> None:
    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        ok, bad = await run_mixed(app)
        history = Replay(app)
        failed = [r async for r in history.events(kinds=["failed"])]
        assert [r.job_id for r in failed] == [bad]
        adds = [r async for r in history.events(task=ADD)]
        assert {r.job_id for r in adds} == {ok}
        jobs_failed = [r async for r in history.messages(status="failed")]
        assert {r.job_id for r in jobs_failed} == {bad}
        future = [
            r async for r in history.events(since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        ]
        assert future == []
        today = [r async for r in history.events(since=dt.datetime.now(dt.UTC).date())]
        assert len(today) == len([r async for r in history.events()])
        await drop_queue(app)


async def test_redrive_enqueues_old_jobs_again_as_new_jobs(redis_url: str) -> None:
    app = register(App(queue_name(), redis_url=redis_url))
    target = register(App(queue_name(), redis_url=redis_url))
    async with app, target:
        ok, _ = await run_mixed(app)
        history = Replay(app)
        selected = [r async for r in history.messages(task=ADD)]
        (new_id,) = await history.redrive(selected, into=target.name)
        assert new_id != ok
        async with running_worker(target):
            assert await target.job(new_id).result(timeout=10) == 3
        await drop_queue(app)
        await drop_queue(target)


async def test_follow_yields_new_events(redis_url: str) -> None:
    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        seen: list[str] = []

        redis = await app.redis()
        end = await redis.xrevrange(app.keys.events, "+", "-", count=1)
        after = end[0][0].decode() if end else "0-0"

        async def follow() -> None:
            async for record in Replay(app).follow(after=after, kinds=["enqueued"], block_ms=100):
                seen.append(record.job_id or "")
                return

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            job = await app.enqueue(ADD, 1, 1)
        assert seen == [job.id]
        async with running_worker(app):
            await job.result(timeout=10)
        await drop_queue(app)


def cli(
    url: str, queue: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamq", "replay", "tests.apps.slow:app", *args],
        cwd=ROOT, env=subprocess_env(url, STREAMQ_TEST_QUEUE=queue), input=stdin,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_replay_cli(redis_url: str) -> None:
    name = queue_name()
    app = register(App(name, redis_url=redis_url))
    async with app:
        ok, bad = await run_mixed(app)
        lines = cli(redis_url, name).stdout.splitlines()
        kinds = [json.loads(line)["kind"] for line in lines]
        assert kinds.count("enqueued") == 2 and "failed" in kinds
        story = [
            json.loads(line) for line in cli(redis_url, name, "--job", bad).stdout.splitlines()
        ]
        assert story[-1]["source"] == "job" and story[-1]["kind"] == "failed"
        table = cli(redis_url, name, "--source", "dlq", "--format", "table")
        assert table.returncode == 0 and "ValueError" in table.stdout
        failed_jobs = cli(redis_url, name, "--source", "jobs", "--status", "failed")
        assert {json.loads(line)["job_id"] for line in failed_jobs.stdout.splitlines()} == {bad}
        assert cli(redis_url, name, "--since", "someday").returncode == 2

        dry = cli(redis_url, name, "--redrive", "--task", ADD, stdin="n\n")
        assert dry.returncode == 0 and "dry run: 1 job would" in dry.stderr
        redis = await app.redis()
        assert await redis.xlen(app.keys.stream("default")) == 3  # 1 add + 2 fail attempts
        done = cli(redis_url, name, "--redrive", "--task", ADD, "--yes")
        assert "re-enqueued 1 job into" in done.stderr
        assert await redis.xlen(app.keys.stream("default")) == 4
        async with running_worker(app):

            async def drained() -> bool:
                return int((await redis.xinfo_groups(app.keys.stream("default")))[0]["lag"]) == 0

            await wait_until(drained, description="the re-driven job to run")

        env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=name)
        since = str(int(time.time() * 1000))
        args = [
            "replay",
            "tests.apps.slow:app",
            "--follow",
            "--since",
            since,
            "--status",
            "enqueued",
        ]
        async with streamq_child(args, env=env) as child:
            job = await app.enqueue(ADD, 5, 5)  # before or after the child starts: both seen
            await child.wait_for_line(lambda line: job.id in line, 20, "the followed event")
            child.signal(signal.SIGINT)
            assert await child.wait(timeout_s=20) == 0
        async with running_worker(app):
            await job.result(timeout=10)
        await drop_queue(app)
