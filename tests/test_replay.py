"""Replay: the retained history answers "what happened to job X, and what else failed"."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


class BinarySerializer:
    """A serializer whose payloads are not UTF-8 (as msgpack's or a pickle's are)."""

    content_type = "test-binary"

    def dumps(self, value: object) -> bytes:
        return b"\xff\xfe\x00BIN" + json.dumps(value).encode() + b"\x80\x81"

    def loads(self, data: bytes) -> object:
        return json.loads(data[6:-2])


async def test_redrive_copies_a_binary_payload_byte_for_byte(redis_url: str) -> None:
    """A payload that is not UTF-8 is re-enqueued exactly as stored.

    Before, records decoded fields with errors="replace" and redrive encoded
    the text again, so every undecodable byte became U+FFFD (EF BF BD).
    """
    app = App(queue_name(), redis_url=redis_url, serializer=BinarySerializer())

    @app.task(name="bin")
    async def handler(x: int) -> None:
        return None

    async with app:
        await handler.enqueue(7)
        redis = await app.redis()
        ((_, original),) = await redis.xrange(app.keys.stream("default"))
        history = Replay(app)
        selected = [r async for r in history.messages(task="bin")]
        (new_id,) = await history.redrive(selected)
        entries = await redis.xrange(app.keys.stream("default"))
        redriven = [f for _, f in entries if f[b"id"] == new_id.encode()]
        assert redriven[0][b"payload"] == original[b"payload"]
        assert redriven[0][b"ct"] == b"test-binary"
        # The record still prints as JSON: undecodable bytes are shown, not lost.
        (record,) = [r async for r in history.messages(task="bin", job=new_id)]
        shown = json.loads(json.dumps(record.as_dict(binary="base64")))
        assert shown["payload"].startswith("base64:")
        await drop_queue(app)


async def test_messages_by_status_asks_for_the_hashes_in_one_round_trip_per_page(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``messages(status=...)`` pipelines its job-hash lookups instead of one HGET each."""
    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        ok, bad = await run_mixed(app)
        extra = [await app.enqueue(ADD, n, n) for n in range(30)]
        async with running_worker(app):
            for job in extra:
                await job.result(timeout=10)
        redis = await app.redis()
        round_trips = {"hget": 0, "pipeline": 0}
        hget, pipeline = redis.hget, redis.pipeline

        def counted_hget(*args: Any, **kwargs: Any) -> Any:
            round_trips["hget"] += 1
            return hget(*args, **kwargs)

        def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
            round_trips["pipeline"] += 1
            return pipeline(*args, **kwargs)

        monkeypatch.setattr(redis, "hget", counted_hget)
        monkeypatch.setattr(redis, "pipeline", counted_pipeline)
        history = Replay(app)
        failed = [r.job_id async for r in history.messages(status="failed")]
        succeeded = [r.job_id async for r in history.messages(status="succeeded")]
        assert set(failed) == {bad}  # its first attempt's message and its retry's
        assert len(succeeded) == 31 and ok in succeeded
        assert round_trips == {"hget": 0, "pipeline": 2}, round_trips
        await drop_queue(app)


async def test_replay_says_when_the_range_starts_before_the_oldest_retained_entry(
    redis_url: str,
) -> None:
    """After a trim, the history knows where it starts and the CLI says so.

    Before, a range that began before the oldest retained event printed what
    was left as if it were everything.
    """
    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        await run_mixed(app)
        history = Replay(app)
        assert await history.trimmed_before(app.keys.events) is None
        redis = await app.redis()
        (first_id, _), *_ = await redis.xrange(app.keys.events, count=2)
        await redis.xtrim(
            app.keys.events, minid=first_id.decode().split("-")[0] + "-99999", approximate=False
        )
        (kept, _), *_ = await redis.xrange(app.keys.events, count=1)
        assert await history.trimmed_before(app.keys.events) == kept.decode()
        code, _out, err = await replay_cli(app, "--since", "2020-01-01")
        assert code == 0
        assert "history of events before" in err and "was trimmed" in err, err
        later = int(first_id.decode().split("-")[0]) + 60_000
        code, _out, err = await replay_cli(app, "--since", str(later))
        assert "trimmed" not in err, err
        await drop_queue(app)


async def replay_cli(app: App, *args: str) -> tuple[int, str, str]:
    """``streamq replay`` for ``app`` in a child process: exit code, stdout, stderr."""
    env = subprocess_env(str(app.settings.redis_url), STREAMQ_TEST_QUEUE=app.name)
    async with streamq_child(["replay", "tests.apps.slow:app", *args], env) as child:
        code = await child.wait(timeout_s=30)
    return code, "\n".join(child.stdout), "\n".join(child.stderr)


async def test_a_jobs_story_reads_that_job_not_the_history(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """story() decodes a handful of entries while the job hash lives, and once it is gone
    reads from the enqueue time its id carries to its final event, not the whole stream.

    Before, it read every event, every job message and the whole DLQ: about
    nine thousand entries here, millions on a busy queue.
    """
    import streamq.replay as replay_module

    decoded = {"n": 0}
    record = replay_module._record

    def counting(*args: Any) -> Any:
        decoded["n"] += 1
        return record(*args)

    monkeypatch.setattr(replay_module, "_record", counting)
    monkeypatch.setattr(replay_module, "CLOCK_SKEW_MS", 0)  # one machine: one clock
    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        add = app.tasks[ADD]
        await add.enqueue_many([(n, n) for n in range(1500)])
        async with running_worker(app, concurrency=50):
            await wait_until(lambda: app_idle(app), timeout=60, description="the first drain")
            target = await app.enqueue(FAIL, "the one we audit")
            assert await app.job(target.id).wait(timeout=20) == JobStatus.FAILED
            await add.enqueue_many([(n, n) for n in range(1500)])
            await wait_until(lambda: app_idle(app), timeout=60, description="the second drain")
        redis = await app.redis()
        total = await redis.xlen(app.keys.events)
        assert total > 8000

        decoded["n"] = 0
        story = await Replay(app).story(target.id)
        kinds = [(r.source, r.kind) for r in story]
        assert ("event", "enqueued") in kinds and ("event", "retried") in kinds
        assert ("event", "failed") in kinds and ("dlq", "dead") in kinds
        assert [r.fields.get("attempt") for r in story if r.source == "message"] == ["1", "2"]
        assert kinds[-1] == ("job", "failed")
        assert decoded["n"] <= 20, decoded

        await redis.delete(app.keys.job(target.id))  # as when result_ttl has passed
        decoded["n"] = 0
        expired = await Replay(app).story(target.id)
        assert [(r.source, r.kind, r.id) for r in expired] == [
            (r.source, r.kind, r.id) for r in story if r.source != "job"
        ]
        assert decoded["n"] <= 20, f"{decoded['n']} of {total} entries decoded"
        await drop_queue(app)


async def app_idle(app: App) -> bool:
    redis = await app.redis()
    groups = [await redis.xinfo_groups(app.keys.stream(p)) for p in app.settings.priorities]
    busy = sum(g["lag"] or 0 for gs in groups for g in gs) + sum(
        g["pending"] for gs in groups for g in gs
    )
    return busy == 0 and await redis.zcard(app.keys.delayed) == 0


async def test_a_requeued_binary_payload_is_the_stored_bytes(redis_url: str) -> None:
    """A DLQ requeue puts back the payload exactly as stored (the script copies bytes)."""
    from streamq import DeadLetters

    app = App(queue_name(), redis_url=redis_url, serializer=BinarySerializer())

    @app.task(name="bin-fails", max_retries=0)
    async def fails(x: int) -> None:
        raise ValueError("to the DLQ")

    async with app:
        job = await fails.enqueue(9)
        redis = await app.redis()
        ((_, original),) = await redis.xrange(app.keys.stream("default"))
        async with running_worker(app):
            assert await app.job(job.id).wait(timeout=10) == JobStatus.FAILED
        (letter,) = await DeadLetters(app).entries()
        await DeadLetters(app).requeue(letter.id)
        entries = await redis.xrange(app.keys.stream("default"))
        assert len(entries) == 2
        assert entries[-1][1][b"payload"] == original[b"payload"]
        await drop_queue(app)


async def test_a_story_older_than_the_retained_history_says_so(redis_url: str) -> None:
    """``replay --job`` of a job enqueued before the oldest retained event notes the gap."""
    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        old, _ = await run_mixed(app)
        redis = await app.redis()
        entries = await redis.xrange(app.keys.events)
        keep_from = entries[len(entries) // 2][0].decode()
        await redis.xtrim(app.keys.events, minid=keep_from, approximate=False)
        code, _out, err = await replay_cli(app, "--job", old)
        assert code in (0, 1)
        assert "history of events before" in err and "was trimmed" in err, err
        await drop_queue(app)


async def test_an_expired_story_is_found_when_the_producers_clock_ran_ahead(
    redis_url: str,
) -> None:
    """A job id whose time is 30 s ahead of the server's (a fast producer clock): the
    story still starts at the job's first event, read from up to CLOCK_SKEW_MS before."""
    from streamq.ids import job_id_time_ms, new_job_id

    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        now_id = new_job_id()
        ahead_ms = (job_id_time_ms(now_id) or 0) + 30_000
        job_id = f"{ahead_ms:012x}{now_id[12:]}"
        assert job_id_time_ms(job_id) == ahead_ms
        job = await app.tasks[ADD].with_options(job_id=job_id).enqueue(2, 3)
        async with running_worker(app):
            assert await job.result(timeout=10) == 5
        redis = await app.redis()
        await redis.delete(app.keys.job(job_id))
        kinds = [r.kind for r in await Replay(app).story(job_id) if r.source == "event"]
        assert kinds[0] == "enqueued" and kinds[-1] == "succeeded", kinds
        await drop_queue(app)


async def test_redrive_keeps_the_jobs_headers(redis_url: str) -> None:
    app = register(App(queue_name(), redis_url=redis_url))
    async with app:
        await app.tasks[ADD].with_options(headers={"tenant": "acme"}).enqueue(1, 2)
        history = Replay(app)
        selected = [r async for r in history.messages(task=ADD)]
        (new_id,) = await history.redrive(selected)
        (copy,) = [r async for r in history.messages(job=new_id)]
        assert json.loads(copy.fields["headers"]) == {"tenant": "acme"}
        await drop_queue(app)
