"""The public API as a user's type checker sees it: checked by mypy, never run.

Right calls are pinned with ``assert_type``; wrong calls carry a specific
``# type: ignore[code]``, so ``warn_unused_ignores`` fails the build the day
mypy starts accepting one of them. pytest does not collect this file (it is
not named ``test_*.py``), and nothing here talks to Redis.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

from streamq import (
    App,
    CancelResult,
    Job,
    JobDetails,
    JobStatus,
    Limit,
    Retry,
    Settings,
    Task,
    Worker,
    empty_queue,
)

app = App("emails")


@app.task(priority="high", max_retries=5, timeout=30)
async def send_email(to: str, subject: str) -> dict[str, str]:
    return {"to": to, "subject": subject}


@app.task
def resize(path: str, width: int = 128) -> str:
    return f"{path}@{width}"


@app.task
async def ping() -> None:
    return None


@app.task(name="reports.build")
def build_report(*, month: str) -> list[int]:
    return []


@app.task(limit=Limit(rate="100/min", key="customer_id", burst=20), concurrency=5)
async def charge(customer_id: str, cents: int) -> int:
    return cents


# -- the decorator keeps the handler's signature and result type -------------------

# Task is invariant in its result types, so these assignments pin them exactly
# (the parameters are pinned below, by the calls enqueue accepts and rejects).
async_task: Task[..., dict[str, str], Coroutine[Any, Any, dict[str, str]]] = send_email
sync_task: Task[..., str, str] = resize
keyword_task: Task[..., list[int], list[int]] = build_report
redecorated: Task[..., str, str] = app.task(priority="low", name="resize.low")(resize.fn)
not_sync: Task[..., str, str] = send_email  # type: ignore[assignment]
not_widened: Task[..., object, object] = resize  # type: ignore[assignment]


async def right_calls() -> None:
    # enqueue is typed from the handler: the job's result is the awaited value.
    assert_type(await send_email.enqueue("a@example.com", "hi"), Job[dict[str, str]])
    assert_type(await send_email.enqueue(to="a@example.com", subject="hi"), Job[dict[str, str]])
    assert_type(await resize.enqueue("cat.png"), Job[str])
    assert_type(await resize.enqueue("cat.png", width=64), Job[str])
    assert_type(await ping.enqueue(), Job[None])
    assert_type(await build_report.enqueue(month="2026-11"), Job[list[int]])
    assert_type(
        await resize.enqueue_many([("a.png", 64), {"path": "b.png"}]),
        list[Job[str]],
    )

    # Calling the task directly runs the handler: its own return type.
    assert_type(resize("cat.png", 64), str)
    coroutine = assert_type(send_email("a@example.com", "hi"), Coroutine[Any, Any, dict[str, str]])
    coroutine.close()
    assert_type(await send_email("a@example.com", "hi"), dict[str, str])

    # with_options keeps the type, for enqueue and for direct calls.
    low = send_email.with_options(priority="low")
    same_async: Task[..., dict[str, str], Coroutine[Any, Any, dict[str, str]]] = low
    assert_type(await low.enqueue("a@example.com", "hi"), Job[dict[str, str]])
    thumb = resize.with_options(priority="high", max_retries=0, timeout=1.5, job_id="thumb-1")
    same_sync: Task[..., str, str] = thumb
    assert_type(await thumb.enqueue("cat.png", 64), Job[str])
    assert_type(thumb("cat.png"), str)
    del same_async, same_sync

    # Job handles: status, result, lookup by id.
    job = await send_email.enqueue("a@example.com", "hi")
    assert_type(job.id, str)
    assert_type(await job.status(), JobStatus)
    assert_type(await job.result(timeout=10), dict[str, str])
    assert_type(await job.result(), dict[str, str])
    assert_type(await job.wait(timeout=1.0), JobStatus)
    assert_type(await job.info(), dict[str, str])
    assert_type(app.job("some-id"), Job[Any])
    assert_type(await app.enqueue("reports.build", month="2026-11"), Job[Any])
    assert_type(JobStatus.SUCCEEDED.final, bool)
    details = assert_type(await job.details(), JobDetails)
    assert_type(details.status, JobStatus)
    assert_type(details.args, list[Any] | None)

    # Retry schedules and result TTLs, per task and per job.
    @app.task(retry=Retry(intervals=[10, 30, 60]), result_ttl=60)
    async def scheduled(n: int) -> int:
        return n

    assert_type(
        await scheduled.with_options(retry=Retry(intervals=[1.5]), result_ttl=5).enqueue(1),
        Job[int],
    )
    assert_type(await job.cancel(), CancelResult)
    assert_type(await empty_queue(app, task="reports.build"), int)

    # App and Worker construction.
    assert_type(App("q", redis_url="redis://127.0.0.1:6379/0", priorities=["a", "b"]), App)
    assert_type(App("q", settings=Settings(prefix="jobs"), result_ttl=60.0), App)
    worker = Worker(app, concurrency=100, grace_s=30, burst=True)
    assert_type(await worker.run(), None)
    async with App("q") as entered:
        assert_type(entered, App)


async def wrong_calls() -> None:
    # Arguments are checked against the handler's signature.
    await send_email.enqueue("a@example.com")  # type: ignore[call-arg]
    await send_email.enqueue(1, "hi")  # type: ignore[arg-type]
    await send_email.enqueue("a@example.com", "hi", cc="b@example.com")  # type: ignore[call-arg]
    await resize.enqueue("cat.png", width="wide")  # type: ignore[arg-type]
    await build_report.enqueue("2026-11")  # type: ignore[call-arg]
    await ping.enqueue(1)  # type: ignore[call-arg]
    resize(3)  # type: ignore[arg-type]

    # with_options keeps the parameters, not only the result type.
    await send_email.with_options(priority="low").enqueue("a@example.com")  # type: ignore[call-arg]
    await resize.with_options(timeout=5).enqueue(path=3)  # type: ignore[arg-type]

    # The result type is not widened or lost.
    job = await resize.enqueue("cat.png")
    number: int = await job.result()  # type: ignore[assignment]
    await job.result(timeout="10")  # type: ignore[arg-type]

    # Options are typed too.
    send_email.with_options(priority=1)  # type: ignore[arg-type]
    send_email.with_options(retries=2)  # type: ignore[call-arg]
    app.task(priority="high", retries=2)  # type: ignore[call-overload]
    send_email.with_options(retry=[10, 30])  # type: ignore[arg-type]
    send_email.with_options(result_ttl="1h")  # type: ignore[arg-type]
    app.task(limit="100/min")  # type: ignore[call-overload]
    Limit(rate=100)  # type: ignore[arg-type]
    assert_type(await charge.enqueue("c1", 500), Job[int])
    app.job(42)  # type: ignore[arg-type]
    App(42)  # type: ignore[arg-type]
    Worker(app, concurrency="many")  # type: ignore[arg-type]
    del number


# -- schedules: the decorators keep the handler's types; options are checked -------------


@app.cron("*/5 * * * *", tz="Europe/Paris", name="reports.every5", priority="low")
async def every_five() -> int:
    return 5


@app.periodic(every=30, catch_up="once", max_retries=0)
def heartbeat(verbose: bool = False) -> None:
    return None


scheduled_async: Task[..., int, Coroutine[Any, Any, int]] = every_five
scheduled_sync: Task[..., None, None] = heartbeat


def wrong_schedules() -> None:
    app.cron("* * * * *", catch_up="all")  # type: ignore[arg-type]
    app.periodic(every="5s")  # type: ignore[arg-type]
    app.periodic(every=5, retries=2)  # type: ignore[call-arg]
    app.cron()  # type: ignore[call-arg]
