"""The DLQ: dead jobs keep their story, and can be requeued or purged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamq import App, JobFailed, JobStatus
from streamq.dlq import DeadLetterNotFound, DeadLetters, JobIdReused
from streamq.keys import GROUP
from tests.apps.slow import ADD, FAIL, register
from tests.conftest import drop_queue, queue_name, running_worker, subprocess_env

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


async def test_final_failure_lands_in_the_dlq_with_error_and_traceback(app: App) -> None:
    @app.task(name="breaks", max_retries=1, backoff_base=0.01)
    async def breaks(n: int) -> None:
        raise ValueError(f"bad {n}")

    job = await breaks.enqueue(7)
    async with running_worker(app):
        with pytest.raises(JobFailed):
            await job.result(timeout=10)
    (letter,) = await DeadLetters(app).entries()
    assert letter.job_id == job.id and letter.task == "breaks"
    assert letter.error_type == "ValueError" and letter.error == "bad 7"
    assert "raise ValueError" in letter.traceback
    assert letter.attempts == 2 and letter.deliveries == 1
    assert letter.reason == "failed: ValueError"
    assert letter.origin_stream == app.keys.stream("default")
    assert letter.fields["payload"] == '{"args":[7],"kwargs":{}}'
    assert (await job.info())["dlq_id"] == letter.id


async def test_requeue_runs_the_job_again_and_removes_the_entry(app: App) -> None:
    fixed = False

    @app.task(name="flaky", max_retries=0, priority="high")
    async def flaky() -> str:
        if not fixed:
            raise RuntimeError("not yet")
        return "fixed"

    job = await flaky.enqueue()
    dlq = DeadLetters(app)
    async with running_worker(app):
        assert await job.wait(timeout=10) == JobStatus.FAILED
        (letter,) = await dlq.entries()
        fixed = True
        assert await dlq.requeue(letter.id) == job.id
        assert await dlq.count() == 0
        assert await job.result(timeout=10) == "fixed"
    info = await job.info()
    assert info["attempts"] == "1"
    redis = await app.redis()
    entries = await redis.xrange(app.keys.stream("high"))
    assert [e[1][b"attempt"] for e in entries] == [b"1", b"1"]
    with pytest.raises(DeadLetterNotFound):
        await dlq.requeue(letter.id)  # a second requeue adds nothing
    assert len(await redis.xrange(app.keys.stream("high"))) == 2


async def test_requeue_all_by_task_and_purge(app: App) -> None:
    @app.task(name="a", max_retries=0)
    async def a() -> None:
        raise ValueError("a")

    @app.task(name="b", max_retries=0)
    async def b() -> None:
        raise ValueError("b")

    jobs = [await a.enqueue(), await a.enqueue(), await b.enqueue()]
    async with running_worker(app):
        for job in jobs:
            await job.wait(timeout=10)
    dlq = DeadLetters(app)
    assert await dlq.count() == 3
    requeued = await dlq.requeue_all(task="a")
    assert sorted(requeued) == sorted(j.id for j in jobs[:2])
    assert [letter.task for letter in await dlq.entries()] == ["b"]
    assert await jobs[0].status() == JobStatus.QUEUED
    assert await dlq.purge(older_than_s=3600) == 0
    assert await dlq.purge() == 1
    assert await dlq.count() == 0
    # Leave nothing pending for the key-leak check's sake: drain the requeued jobs.
    async with running_worker(app):
        for job in jobs[:2]:
            await job.wait(timeout=10)


async def test_entry_without_a_job_id_cannot_be_requeued(app: App) -> None:
    redis = await app.redis()
    await redis.xadd(app.keys.dlq, {"dlq_reason": "garbage"})
    dlq = DeadLetters(app)
    (letter,) = await dlq.entries()
    with pytest.raises(ValueError, match="no job id"):
        await dlq.requeue(letter.id)
    with pytest.raises(DeadLetterNotFound):
        await dlq.get("1-1")


async def test_requeue_of_an_old_entry_never_resets_a_newer_job_with_its_id(
    redis_url: str,
) -> None:
    """A DLQ entry whose job id was reused after its hash expired is refused.

    ``invoice-123`` fails for good (DLQ entry E); its hash expires; a new job
    with the same id is enqueued and succeeds. Requeueing E must not set
    that newer job back to ``queued`` and run it a third time: the hash
    belongs to another run (its ``dlq_id`` is not E), so DeadLetters.requeue
    raises JobIdReused (and the CLI says so, exit 1) and nothing changes.
    Requeueing an entry whose hash is gone still works.
    """
    name = queue_name()
    app = register(App(name, redis_url=redis_url))
    async with app:
        fail = app.tasks[FAIL].with_options(job_id="invoice-123", max_retries=0)
        first = await fail.enqueue("boom")
        async with running_worker(app):
            assert await first.wait(timeout=10) == JobStatus.FAILED
        dlq = DeadLetters(app)
        (letter,) = await dlq.entries()
        redis = await app.redis()
        await redis.delete(app.keys.job("invoice-123"))  # its result TTL ran out
        add = app.tasks[ADD].with_options(job_id="invoice-123")
        second = await add.enqueue(1, 2)
        async with running_worker(app):
            assert await second.result(timeout=10) == 3
        before = await second.info()
        stream_len = await redis.xlen(app.keys.stream("default"))

        with pytest.raises(JobIdReused, match="invoice-123") as caught:
            await dlq.requeue(letter.id)
        assert caught.value.job_id == "invoice-123" and isinstance(caught.value, ValueError)
        assert await second.info() == before
        assert await redis.xlen(app.keys.stream("default")) == stream_len
        assert [e.id for e in await dlq.entries()] == [letter.id]
        assert await dlq.requeue_all() == []

        cli = streamq_cli(redis_url, name, "dlq", "requeue", "tests.apps.slow:app", letter.id)
        assert cli.returncode == 1 and "requeued 0 job" in cli.stdout
        assert "newer job" in cli.stderr and "invoice-123" in cli.stderr
        assert await second.info() == before

        await redis.delete(app.keys.job("invoice-123"))  # gone: the entry may come back
        assert await dlq.requeue(letter.id) == "invoice-123"
        assert await app.job("invoice-123").status() == JobStatus.QUEUED
        await drop_queue(app)


def streamq_cli(
    url: str, queue: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamq", *args],
        cwd=ROOT, env=subprocess_env(url, STREAMQ_TEST_QUEUE=queue), input=stdin,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_dlq_cli_list_show_requeue_purge(redis_url: str) -> None:
    name = queue_name()
    app = register(App(name, redis_url=redis_url))
    async with app:
        jobs = [await app.enqueue(FAIL, f"boom {i}") for i in range(2)]
        async with running_worker(app):
            for job in jobs:
                assert await job.wait(timeout=10) == JobStatus.FAILED
        path = "tests.apps.slow:app"
        listed = streamq_cli(redis_url, name, "dlq", "list", path, "--json")
        assert listed.returncode == 0, listed.stderr
        records = [json.loads(line) for line in listed.stdout.splitlines()]
        assert {r["job_id"] for r in records} == {j.id for j in jobs}
        assert {r["error"] for r in records} == {"boom 0", "boom 1"}
        table = streamq_cli(redis_url, name, "dlq", "list", path)
        assert "2 entries" in table.stdout and "ValueError" in table.stdout

        shown = streamq_cli(redis_url, name, "dlq", "show", path, records[0]["id"])
        assert shown.returncode == 0 and "traceback:" in shown.stdout
        assert "raise ValueError" in shown.stdout
        missing = streamq_cli(redis_url, name, "dlq", "show", path, "1-1")
        assert missing.returncode == 1 and "no DLQ entry" in missing.stderr

        requeued = streamq_cli(redis_url, name, "dlq", "requeue", path, records[0]["id"])
        assert requeued.returncode == 0 and "requeued 1 job" in requeued.stdout
        assert streamq_cli(redis_url, name, "dlq", "requeue", path).returncode == 2

        refused = streamq_cli(redis_url, name, "dlq", "purge", path, stdin="n\n")
        assert refused.returncode == 0 and "nothing deleted" in refused.stdout
        assert await DeadLetters(app).count() == 1
        purged = streamq_cli(redis_url, name, "dlq", "purge", path, "--yes")
        assert purged.returncode == 0 and "deleted 1" in purged.stdout
        bad = streamq_cli(redis_url, name, "dlq", "purge", path, "--older-than", "soon", "--yes")
        assert bad.returncode == 2
        requeued_job = app.job(records[0]["job_id"])  # oldest DLQ entry: either job
        async with running_worker(app):  # the requeued job fails again, for good
            assert await requeued_job.wait(timeout=10) == JobStatus.FAILED
        redis = await app.redis()
        assert int((await redis.xpending(app.keys.stream("default"), GROUP))["pending"]) == 0
        await drop_queue(app)
