"""Running delayed jobs now (``streamq.delayed.run_now``, ``Job.run_now``, the dashboard's
"Run now"): the member moves from the delayed set into its stream in one script."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from streamq import App, ConfigError, Job, JobStatus, RunNowResult, Settings
from streamq.dashboard import create_dashboard
from streamq.delayed import run_now
from streamq.progress import current_job
from streamq.retry import Retry
from tests.conftest import assert_no_key_leak, queue_name, running_worker, wait_until
from tests.test_dashboard import client, csrf_of

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fast_app(redis_url: str) -> AsyncIterator[App]:
    application = App(queue_name(), redis_url=redis_url, settings=Settings(janitor_interval_s=0.05))
    async with application:
        yield application
        await assert_no_key_leak(application)


async def promoted_events(app: App, job_id: str) -> list[dict[bytes, bytes]]:
    redis = await app.redis()
    return [
        fields
        for _, fields in await redis.xrange(app.keys.events)
        if fields[b"kind"] == b"promoted" and fields[b"job"] == job_id.encode()
    ]


async def test_a_scheduled_job_run_now_is_queued_in_its_stream_and_runs_at_once(
    fast_app: App,
) -> None:
    """A job due in 600 s, run now: it leaves the delayed set for its priority's stream,
    its status is ``queued``, a 'promoted' event by 'api' is indexed in its hash, and a
    running worker finishes it within seconds (without run_now it would wait 600 s)."""

    @fast_app.task(name="urgent", priority="high")
    async def urgent(n: int) -> int:
        return n + 1

    job = await urgent.enqueue_in(600, 41)
    assert await job.status() == JobStatus.SCHEDULED
    assert await job.run_now() == RunNowResult.MOVED
    assert await job.status() == JobStatus.QUEUED
    redis = await fast_app.redis()
    assert await redis.zcard(fast_app.keys.delayed) == 0
    ((msg_id, fields),) = await redis.xrange(fast_app.keys.stream("high"))
    assert fields[b"id"] == job.id.encode() and fields[b"task"] == b"urgent"
    assert await redis.hget(fast_app.keys.job(job.id), "msg_id") == msg_id
    (event,) = await promoted_events(fast_app, job.id)
    assert event[b"by"] == b"api" and event[b"msg"] == msg_id
    hash_ = await redis.hgetall(fast_app.keys.job(job.id))
    assert [v for k, v in hash_.items() if k.startswith(b"ev:")].count(b"promoted") == 1
    async with running_worker(fast_app):
        assert await job.result(timeout=10) == 42


async def test_a_retry_waiting_its_backoff_runs_its_next_attempt_now(fast_app: App) -> None:
    """A handler that fails once with a 600 s backoff waits as ``retrying``; run now,
    its second attempt runs at once and succeeds."""
    attempts: list[int] = []

    @fast_app.task(name="flaky", retry=Retry(intervals=[600]))
    async def flaky() -> int:
        attempt = current_job().attempt
        attempts.append(attempt)
        if attempt == 1:
            raise ValueError("first attempt fails")
        return attempt

    job = await flaky.enqueue()
    async with running_worker(fast_app):
        await wait_status(job, JobStatus.RETRYING)
        redis = await fast_app.redis()
        assert await redis.zcard(fast_app.keys.delayed) == 1
        assert await run_now(fast_app, [job.id], by="test") == {job.id: RunNowResult.MOVED}
        assert await job.result(timeout=10) == 2
    assert attempts == [1, 2]
    (event,) = await promoted_events(fast_app, job.id)
    assert event[b"by"] == b"test"


async def test_only_the_chosen_job_of_the_same_due_time_moves(fast_app: App) -> None:
    """Two jobs due at the same millisecond: run now picks the member by its job id,
    not the first one at that score."""

    @fast_app.task(name="later")
    async def later(n: int) -> int:
        return n

    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=600)
    first = await later.enqueue_at(when, 1)
    second = await later.enqueue_at(when, 2)
    redis = await fast_app.redis()
    members = await redis.zrange(fast_app.keys.delayed, 0, -1, withscores=True)
    assert len(members) == 2 and members[0][1] == members[1][1]
    assert await second.run_now() == RunNowResult.MOVED
    assert await first.status() == JobStatus.SCHEDULED
    assert await second.status() == JobStatus.QUEUED
    ((_, fields),) = await redis.xrange(fast_app.keys.stream("default"))
    assert fields[b"id"] == second.id.encode()
    (left,) = await redis.zrange(fast_app.keys.delayed, 0, -1)
    assert first.id.encode() in left
    for job in (first, second):
        await job.cancel()


async def test_a_job_no_longer_delayed_is_reported_and_nothing_is_written(
    fast_app: App,
) -> None:
    """Run now twice (a retried call), on a cancelled job and on an unknown id:
    only the first call moves anything; the others write no event, entry or field."""

    @fast_app.task(name="later")
    async def later() -> None:
        return None

    moved = await later.enqueue_in(600)
    gone = await later.enqueue_in(600)
    await gone.cancel()
    assert await moved.run_now() == RunNowResult.MOVED
    redis = await fast_app.redis()

    async def snapshot() -> tuple[object, ...]:
        return (
            await redis.xlen(fast_app.keys.events),
            await redis.xlen(fast_app.keys.stream("default")),
            await redis.zcard(fast_app.keys.delayed),
            await redis.hgetall(fast_app.keys.job(moved.id)),
            await redis.hgetall(fast_app.keys.job(gone.id)),
        )

    before = await snapshot()
    assert await run_now(fast_app, [moved.id, gone.id, "no-such-job"]) == {
        moved.id: RunNowResult.NOT_DELAYED,
        gone.id: RunNowResult.ALREADY_FINAL,
        "no-such-job": RunNowResult.NOT_FOUND,
    }
    assert await snapshot() == before
    assert len(await promoted_events(fast_app, moved.id)) == 1
    with pytest.raises(ConfigError, match="non-empty string"):
        await run_now(fast_app, [moved.id, ""])
    assert await snapshot() == before
    await moved.cancel()


async def test_the_dashboard_runs_a_delayed_job_now_behind_csrf_and_confirmation(
    fast_app: App,
) -> None:
    """The delayed page shows "Run now"; the POST asks first, then moves the job."""

    @fast_app.task(name="later")
    async def later() -> str:
        return "ran"

    job = await later.enqueue_in(600)
    url = f"/q/{fast_app.name}/delayed/run-now"
    async with client(create_dashboard(fast_app)) as http:
        page = await http.get(f"/q/{fast_app.name}/delayed")
        assert 'data-testid="delayed-run-now"' in page.text
        refused = await http.post(url, data={"job": job.id, "confirm": "1"})
        assert refused.status_code == 403
        token = await csrf_of(http, f"/q/{fast_app.name}/delayed")
        asked = await http.post(url, data={"job": job.id, "csrf": token})
        assert asked.status_code == 200 and 'data-testid="confirm"' in asked.text
        assert await job.status() == JobStatus.SCHEDULED  # asking changed nothing
        done = await http.post(url, data={"job": job.id, "csrf": token, "confirm": "1"})
        assert done.status_code == 303 and "run+now" in done.headers["location"]
        assert await job.status() == JobStatus.QUEUED
        again = await http.post(url, data={"job": job.id, "csrf": token, "confirm": "1"})
        assert "not+delayed" in again.headers["location"]
    (event,) = await promoted_events(fast_app, job.id)
    assert event[b"by"] == b"dashboard"
    async with running_worker(fast_app):
        assert await job.result(timeout=10) == "ran"


async def test_a_read_only_dashboard_has_no_run_now_and_refuses_it(fast_app: App) -> None:
    """Read-only hides the button that a writable dashboard shows, and refuses the POST."""

    @fast_app.task(name="later")
    async def later() -> None:
        return None

    job = await later.enqueue_in(600)
    async with client(create_dashboard(fast_app)) as http:
        page = await http.get(f"/q/{fast_app.name}/delayed")
        assert 'data-testid="delayed-run-now"' in page.text  # writable: the button is there
    async with client(create_dashboard(fast_app, read_only=True)) as http:
        page = await http.get(f"/q/{fast_app.name}/delayed")
        assert job.id in page.text and "delayed-run-now" not in page.text
        token = http.cookies.get("streamq_csrf")
        refused = await http.post(
            f"/q/{fast_app.name}/delayed/run-now",
            data={"job": job.id, "csrf": token or "", "confirm": "1"},
        )
        assert refused.status_code == 403
    assert await job.status() == JobStatus.SCHEDULED
    await job.cancel()


async def wait_status(job: Job[int], status: JobStatus) -> None:
    async def reached() -> bool:
        return await job.status() == status

    await wait_until(reached, description=f"status {status}")
