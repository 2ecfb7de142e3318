"""Property: whatever handlers do, every job ends in exactly one final state and
the worker keeps serving (issue 10, point 4).

Hypothesis draws batches of handler behaviours (return any JSON value or one
that cannot be encoded, raise any exception type including BaseException
subclasses, CancelledError, ExceptionGroup and exceptions whose ``__str__`` or
``__repr__`` raise or whose text holds lone surrogates, sleep past the
timeout), as async and as sync handlers, and runs them on one worker that
lives across all examples. After each batch: each job is final (succeeded,
failed or dead) with exactly one final event, and a sentinel job enqueued
last still runs. ``os._exit`` cannot run in-process: the last test runs it in
worker subprocesses.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamq import App, JobStatus, Settings
from streamq.keys import GROUP
from tests.apps.process import streamq_child
from tests.conftest import drop_queue, queue_name, running_worker, subprocess_env, wait_until
from tests.test_hostile_handlers import BrokenBoth, BrokenStr

pytestmark = pytest.mark.anyio

TIMEOUT_S = 0.2
FINAL = {"succeeded", "failed", "dead"}


class CustomBase(BaseException):
    pass


def make_exception(kind: str, text: str) -> BaseException:
    return {
        "value": lambda: ValueError(text),
        "key": lambda: KeyError(text),
        "runtime": lambda: RuntimeError(text + "\udcff"),
        "keyboard": KeyboardInterrupt,
        "system_exit": lambda: SystemExit(3),
        "generator_exit": GeneratorExit,
        "custom_base": lambda: CustomBase(text),
        "cancelled": lambda: asyncio.CancelledError(text),
        "group": lambda: ExceptionGroup(text or "group", [ValueError(text), BrokenStr()]),
        "broken_str": BrokenStr,
        "broken_both": BrokenBoth,
        "timeout_error": lambda: TimeoutError(text),
    }[kind]()


EXCEPTIONS = st.sampled_from(
    ["value", "key", "runtime", "keyboard", "system_exit", "generator_exit", "custom_base",
     "cancelled", "group", "broken_str", "broken_both", "timeout_error"]
)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
BEHAVIOUR = st.one_of(
    st.tuples(st.just("return"), JSON),
    st.tuples(st.just("return_unencodable"), st.just(None)),
    st.tuples(st.just("raise"), st.tuples(EXCEPTIONS, st.text(max_size=20))),
    st.tuples(st.just("sleep_past_timeout"), st.just(None)),
)


def act(behaviour: list[Any]) -> Any:
    what, detail = behaviour
    if what == "return":
        return detail
    if what == "return_unencodable":
        return object()
    if what == "raise":
        raise make_exception(*detail)
    raise AssertionError(what)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def serving(redis_url_module: str) -> Any:
    app = App(queue_name(), redis_url=redis_url_module, settings=Settings(max_retries=1))

    @app.task(name="behave_async", timeout=TIMEOUT_S, backoff_base=0, max_retries=1)
    async def behave_async(behaviour: list[Any]) -> Any:
        if behaviour[0] == "sleep_past_timeout":
            await anyio.sleep(30)
        return act(behaviour)

    @app.task(name="behave_sync", timeout=TIMEOUT_S, backoff_base=0, max_retries=1)
    def behave_sync(behaviour: list[Any]) -> Any:
        if behaviour[0] == "sleep_past_timeout":
            time.sleep(TIMEOUT_S * 2)
            return None
        return act(behaviour)

    @app.task(name="sentinel")
    async def sentinel(n: int) -> int:
        return n

    async with app, running_worker(app, concurrency=4) as worker:
        yield app, worker
        await drop_queue(app)


@pytest.fixture(scope="module")
def redis_url_module(valkey: Any) -> str:
    return str(valkey.url)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(st.tuples(st.booleans(), BEHAVIOUR), min_size=1, max_size=6))
async def test_every_job_ends_in_exactly_one_final_state(
    serving: Any, batch: list[tuple[bool, Any]]
) -> None:
    app, worker = serving
    jobs = []
    for is_async, behaviour in batch:
        name = "behave_async" if is_async else "behave_sync"
        jobs.append(await app.enqueue(name, list(behaviour)))

    async def all_final() -> bool:
        statuses = [(await job.info()).get("status") for job in jobs]
        return all(status in FINAL for status in statuses)

    await wait_until(all_final, timeout=60, description="every job final")
    redis = await app.redis()
    ids = {job.id.encode() for job in jobs}
    finals: dict[bytes, int] = {}
    for _, event in await redis.xrange(app.keys.events):
        if event.get(b"job") in ids and event[b"kind"] in (b"succeeded", b"failed", b"dead"):
            finals[event[b"job"]] = finals.get(event[b"job"], 0) + 1
    assert finals == dict.fromkeys(ids, 1)
    for job, (_, behaviour) in zip(jobs, batch, strict=True):
        status = await job.status()
        if behaviour[0] == "return":
            assert status == JobStatus.SUCCEEDED
            assert await job.result(timeout=1) == behaviour[1]
        else:
            assert status in (JobStatus.FAILED, JobStatus.DEAD)
            info = await job.info()
            assert info["error_type"], info
    assert not worker.stopping
    sentinel = await app.enqueue("sentinel", 7)
    assert await sentinel.result(timeout=30) == 7


async def test_a_handler_that_exits_its_process_ends_in_the_dlq(app: App, redis_url: str) -> None:
    """``os._exit`` kills the worker process each time it runs: every restart
    gets it back after the visibility timeout, and past max_deliveries it goes
    to the DLQ. Jobs in flight beside it when the process died lose their
    outcome too and run again (at-least-once); every job still ends in one
    final state, and nothing stays pending."""
    from tests.apps.slow import ADD, register

    register(app)
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=app.name, STREAMQ_VISIBILITY_TIMEOUT="0.5")

    @app.task(name="exits.process")
    def exits() -> None: ...

    killer = await app.enqueue("exits.process")
    good = [await app.enqueue(ADD, i, 1) for i in range(5)]
    for _ in range(10):  # bounded: the job is dead after max_deliveries (5) kills
        if await killer.status() == JobStatus.DEAD:
            break
        async with streamq_child(
            ["worker", "tests.apps.exits:app", "--concurrency", "2", "--burst"], env
        ) as child:
            await child.wait(timeout_s=60)
    info = await killer.info()
    assert info["status"] == "dead" and info["error_type"] == "TooManyDeliveries", info
    for job in good:
        assert (await job.info())["status"] in FINAL
    redis = await app.redis()
    ids = {job.id.encode() for job in [killer, *good]}
    finals = [
        e[b"job"] for _, e in await redis.xrange(app.keys.events)
        if e.get(b"job") in ids and e[b"kind"] in (b"succeeded", b"failed", b"dead")
    ]  # fmt: skip
    assert sorted(finals) == sorted(ids)
    stream = app.keys.stream("default")
    assert int((await redis.xpending(stream, GROUP))["pending"]) == 0
