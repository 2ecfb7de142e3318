"""Retry schedules: ``Retry(intervals=[...])`` as a task option, as in RQ.

The n-th retry waits ``intervals[n-1]`` seconds (the last one repeating);
with no explicit ``max_retries`` a task retries ``len(intervals)`` times. The
rules are pure (``retry_delay_s``, ``decide``) and tested without Redis; the
end-to-end tests read the delays a worker chose from the 'retried' events'
``delay_ms`` fields, not from the wall clock.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from streamq import App, ConfigError, JobStatus, Retry, Settings
from streamq.decide import decide, retry_intervals_for
from streamq.envelope import PoisonMessage, decode
from streamq.retry import MAX_INTERVALS, retry_delay_s
from streamq.task import TaskOptions
from streamq.worker.execute import Execution
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio


def delay(exc: BaseException | None, attempt: int, **options: Any) -> float | None:
    kwargs: dict[str, Any] = {
        "max_retries": 5,
        "retry_on": (Exception,),
        "backoff_base_s": 1000.0,
        "backoff_cap_s": 1000.0,
        "rand": lambda: 1.0,
        "intervals_s": (10.0, 30.0, 60.0),
    }
    kwargs.update(options)
    return retry_delay_s(exc, attempt=attempt, **kwargs)


def test_the_nth_retry_waits_the_nth_interval_and_the_last_repeats() -> None:
    assert [delay(ValueError(), a) for a in range(1, 6)] == [10, 30, 60, 60, 60]
    assert delay(ValueError(), 6) is None, "max_retries still bounds the schedule"


def test_a_schedule_has_no_jitter_and_timeouts_follow_it() -> None:
    assert delay(None, 2, rand=lambda: 0.0) == 30


def test_raise_retry_without_a_delay_follows_the_schedule() -> None:
    assert delay(Retry(), 2) == 30
    assert delay(Retry(delay=5), 2) == 5, "an explicit delay wins"
    assert delay(Retry(intervals=[1, 2]), 2) == 2, "a raised schedule wins over the task's"


def test_retry_on_still_decides_whether_to_retry() -> None:
    assert delay(KeyError(), 1, retry_on=(ValueError,)) is None


def test_without_a_schedule_the_backoff_applies() -> None:
    assert delay(ValueError(), 3, intervals_s=()) == 1000.0


def test_decide_takes_the_entrys_schedule_over_the_tasks() -> None:
    """The per-job override wins, whichever worker decides."""
    options = TaskOptions(max_retries=5, retry_intervals_s=(1.0, 2.0))
    fields = {
        b"v": b"1", b"id": b"j", b"task": b"t", b"ct": b"json", b"payload": b"{}",
        b"attempt": b"2", b"retry_intervals": b"[0.5,7]",
    }  # fmt: skip
    env = decode(fields)
    assert retry_intervals_for(env, options) == (0.5, 7.0)
    failed = Execution(ok=False, duration_ms=1, exception=ValueError())
    decision = decide(
        failed, attempt=2, max_retries=5, options=options,
        intervals_s=retry_intervals_for(env, options),
    )  # fmt: skip
    assert (decision.status, decision.delay_s) == ("retry", 7.0)
    del fields[b"retry_intervals"]
    assert retry_intervals_for(decode(fields), options) == (1.0, 2.0)


@pytest.mark.parametrize(
    "raw", [b"[]", b"[-1]", b"not json", b'["1"]', b"[true]", b"{}", b"[1e999]"]
)
def test_a_bad_schedule_in_an_entry_is_a_poison_message(raw: bytes) -> None:
    fields = {
        b"v": b"1", b"id": b"j", b"task": b"t", b"ct": b"json", b"payload": b"{}",
        b"retry_intervals": raw,
    }  # fmt: skip
    with pytest.raises(PoisonMessage, match="retry_intervals"):
        decode(fields)


@pytest.mark.parametrize(
    "intervals",
    [[], [-1], [math.nan], [math.inf], [1, -0.5], ["10"], [True], "10,20", [1] * 101],
)
def test_a_bad_schedule_is_a_config_error(intervals: Any) -> None:
    with pytest.raises(ConfigError):
        Retry(intervals=intervals)
    assert MAX_INTERVALS == 100


def test_a_delay_and_a_schedule_together_are_a_config_error() -> None:
    """As a task option the delay would be ignored: refused rather than pretended."""
    with pytest.raises(ConfigError, match="not both"):
        Retry(delay=1, intervals=[2])


async def test_bad_retry_options_are_config_errors_at_decoration(app: App) -> None:
    with pytest.raises(ConfigError, match="needs intervals"):
        app.task(name="a", retry=Retry(delay=5))
    with pytest.raises(ConfigError, match="must be a Retry"):
        app.task(name="b", retry=[1, 2])  # type: ignore[call-overload]

    @app.task(name="c")
    async def c() -> None: ...

    with pytest.raises(ConfigError, match="needs intervals"):
        c.with_options(retry=Retry())
    assert "a" not in app.tasks and "b" not in app.tasks


async def test_max_retries_defaults_to_the_number_of_intervals(app: App) -> None:
    @app.task(name="sched", retry=Retry(intervals=[1, 2, 3]))
    async def sched() -> None: ...

    @app.task(name="explicit", retry=Retry(intervals=[1, 2, 3]), max_retries=7)
    async def explicit() -> None: ...

    assert sched.options.max_retries == 3 and sched.options.retry_intervals_s == (1, 2, 3)
    assert explicit.options.max_retries == 7
    assert sched.with_options(retry=Retry(intervals=[5])).options.max_retries == 1
    assert sched.with_options(retry=Retry(intervals=[5]), max_retries=4).options.max_retries == 4


def fast_app(redis_url: str, name: str | None = None) -> App:
    """An App whose janitor promotes due retries every 20 ms."""
    return App(
        name or queue_name(),
        settings=Settings.from_env(redis_url=redis_url, janitor_interval_s=0.02),
    )


async def retried_delays_ms(app: App, job_id: str) -> list[int]:
    redis = await app.redis()
    return [
        int(fields[b"delay_ms"])
        for _, fields in await redis.xrange(app.keys.events)
        if fields.get(b"job") == job_id.encode() and fields[b"kind"] == b"retried"
    ]


async def test_a_task_with_a_schedule_retries_at_its_intervals(redis_url: str) -> None:
    """Given intervals [0.2, 0.4] and no max_retries, a failing job retries after
    200 ms, then 400 ms, then fails: three attempts."""
    app = fast_app(redis_url)
    attempts: list[int] = []
    async with app:

        @app.task(name="flaky", retry=Retry(intervals=[0.2, 0.4]))
        async def flaky() -> None:
            attempts.append(1)
            if len(attempts) == 2:
                raise Retry()  # no delay: the task's schedule
            raise ValueError("down")

        job = await flaky.enqueue()
        async with running_worker(app):
            assert await job.wait(timeout=10) is JobStatus.FAILED
        assert len(attempts) == 3
        assert await retried_delays_ms(app, job.id) == [200, 400]
        await drop_queue(app)


async def test_a_per_job_schedule_travels_in_the_entry_to_any_worker(redis_url: str) -> None:
    """The producer's ``with_options(retry=...)`` reaches a worker whose App registered
    the task with another schedule: the entry carries it (and max_retries)."""
    name = queue_name()
    producer, consumer = fast_app(redis_url, name), fast_app(redis_url, name)
    async with producer, consumer:

        @producer.task(name="t", retry=Retry(intervals=[5]))
        async def t() -> None:
            raise ValueError("no")

        @consumer.task(name="t", retry=Retry(intervals=[5]))
        async def t_worker() -> None:
            raise ValueError("no")

        job = await t.with_options(retry=Retry(intervals=[0.05, 0.1, 0.15])).enqueue()
        redis = await producer.redis()
        ((_, fields),) = await redis.xrange(producer.keys.stream("default"))
        assert json.loads(fields[b"retry_intervals"]) == [0.05, 0.1, 0.15]
        assert fields[b"max_retries"] == b"3"
        async with running_worker(consumer):
            assert await job.wait(timeout=10) is JobStatus.FAILED
        assert await retried_delays_ms(consumer, job.id) == [50, 100, 150]
        await drop_queue(producer)
