"""Outcome scripts: fenced by PEL owner and delivery count, idempotent, batched."""

from __future__ import annotations

import anyio
import pytest

from streamq import App, JobStatus
from streamq.keys import GROUP
from streamq.scripts import Outcome, Scripts, Started, _expand
from streamq.worker import outcome as outcome_module
from streamq.worker.fetch import Fetcher, Message
from streamq.worker.outcome import ALREADY_RECORDED, LOST, RECORDED, OutcomeWriter, move_to_dlq

pytestmark = pytest.mark.anyio


async def fetch_one(app: App, consumer: str) -> Message:
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, consumer, 100)
    await fetcher.ensure_groups()
    (message,) = await fetcher.fetch(1)
    return message


def outcome(app: App, message: Message, job_id: str, status: str = "succeeded") -> Outcome:
    return Outcome(
        stream=message.stream, job_key=app.keys.job(job_id), msg_id=message.msg_id,
        deliveries=message.deliveries, job_id=job_id, task="t", attempt=1, status=status,
        result_or_error_type=b"42" if status == "succeeded" else "ValueError",
        error="" if status == "succeeded" else "boom", traceback="", duration_ms=1,
    )  # fmt: skip


def started(app: App, message: Message, job_id: str) -> Started:
    return Started(
        message.stream, message.msg_id, app.keys.job(job_id), job_id, "t", 1, "default",
        message.deliveries,
    )  # fmt: skip


async def mark_started(app: App, consumer: str, *marks: Started) -> int:
    scripts = await app.scripts()
    return await scripts.start(app.keys.events, marks, group=GROUP, worker=consumer, now_ms=0)


async def complete(app: App, consumer: str, *outcomes: Outcome) -> list[int]:
    scripts = await app.scripts()
    return await scripts.complete(
        app.keys.events, outcomes, delayed=app.keys.delayed, dlq=app.keys.dlq, group=GROUP,
        consumer=consumer, now_ms=0, result_ttl_ms=60_000,
    )  # fmt: skip


async def test_complete_is_fenced_against_a_consumer_that_lost_the_message(app: App) -> None:
    """Invariant 3: after another consumer claimed the message, the old owner's ack,
    result and retry are all refused. Without the XPENDING owner check in
    complete.lua the stale worker would ack B's message and overwrite the job."""

    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    message = await fetch_one(app, "worker-a")
    redis = await app.redis()
    # Worker B takes the message over (what the janitor's XAUTOCLAIM will do).
    await redis.xclaim(message.stream, GROUP, "worker-b", 0, [message.msg_id])
    for status in ("succeeded", "failed", "retry"):
        assert await complete(app, "worker-a", outcome(app, message, job.id, status)) == [LOST]
    assert (await job.info())["status"] == "queued"
    pending = await redis.xpending_range(message.stream, GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(message.msg_id, b"worker-b")]
    assert await redis.xlen(message.stream) == 1  # no retry entry was added


async def test_a_late_start_mark_is_fenced_like_an_outcome(app: App) -> None:
    """Invariant 3 for the lazily written "running" mark.

    A worker paused between fetching and writing its mark may send it after
    another worker reclaimed the job (and after it finished). Without the
    XPENDING check in start.lua, that mark makes the job hash name the stale
    worker and adds a started event from it.
    """

    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    message = await fetch_one(app, "worker-a")
    redis = await app.redis()
    await redis.xclaim(message.stream, GROUP, "worker-b", 0, [message.msg_id])
    assert await mark_started(app, "worker-a", started(app, message, job.id)) == 0
    reclaimed = Message(message.stream, message.priority, message.msg_id, None, 2)
    assert await mark_started(app, "worker-b", started(app, reclaimed, job.id)) == 1
    await redis.xreadgroup(GROUP, "worker-a", {message.stream: "0"})  # owns nothing: no-op
    assert await mark_started(app, "worker-a", started(app, message, job.id)) == 0
    assert (await job.info())["worker"] == "worker-b"
    kinds = [(e[b"kind"], e.get(b"worker")) for _, e in await redis.xrange(app.keys.events)]
    assert kinds.count((b"started", b"worker-b")) == 1
    assert (b"started", b"worker-a") not in kinds


async def test_complete_is_fenced_by_delivery_count(app: App) -> None:
    """The same consumer name receiving the message again (a restart) is a new
    delivery; an outcome for the old delivery must not ack it."""

    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    message = await fetch_one(app, "worker-a")
    redis = await app.redis()
    await redis.xreadgroup(GROUP, "worker-a", {message.stream: "0"})  # delivery count → 2
    assert await complete(app, "worker-a", outcome(app, message, job.id)) == [LOST]
    assert int((await redis.xpending(message.stream, GROUP))["pending"]) == 1


async def test_complete_twice_changes_nothing_the_second_time(app: App) -> None:
    """Invariant 9: redis-py may run the script again after a lost reply."""

    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    message = await fetch_one(app, "w")
    done = outcome(app, message, job.id)
    assert await complete(app, "w", done) == [RECORDED]
    redis = await app.redis()
    events = await redis.xlen(app.keys.events)
    assert await complete(app, "w", done) == [ALREADY_RECORDED]
    assert await redis.xlen(app.keys.events) == events
    assert await job.result(timeout=1) == 42


async def test_retry_twice_adds_one_new_attempt(app: App) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    message = await fetch_one(app, "w")
    retry = outcome(app, message, job.id, "retry")
    assert await complete(app, "w", retry) == [RECORDED]
    assert await complete(app, "w", retry) == [ALREADY_RECORDED]
    redis = await app.redis()
    entries = await redis.xrange(message.stream)
    assert [e[1][b"attempt"] for e in entries] == [b"1", b"2"]
    assert (await job.info())["msg_id"] == entries[1][0].decode()


async def test_dead_is_fenced_and_idempotent(app: App) -> None:
    redis = await app.redis()
    stream = app.keys.stream("default")
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await redis.xadd(stream, {"junk": "1"})
    message = await fetch_one(app, "w")
    scripts, keys, settings = await app.scripts(), app.keys, app.settings
    assert not await move_to_dlq(scripts, keys, settings, "other", message, "r", None, None)
    assert await move_to_dlq(scripts, keys, settings, "w", message, "r", None, None)
    assert not await move_to_dlq(scripts, keys, settings, "w", message, "r", None, None)
    assert await redis.xlen(app.keys.dlq) == 1


async def test_writer_records_queued_outcomes_in_one_script_call(app: App) -> None:
    """Outcomes that queue up while a flush runs share the next script call."""

    @app.task(name="t")
    async def t() -> None: ...

    jobs = await t.enqueue_many([()] * 5)
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, "w", 100)
    messages = await fetcher.fetch(5)
    calls: list[int] = []

    class CountingScripts(Scripts):
        async def run_many(self, many):  # type: ignore[no-untyped-def, override]
            calls.extend((len(args) - 4) // 14 for name, (_, args) in many if name == "complete")
            return await super().run_many(many)

    settled: list[list[tuple[str, bytes]]] = []
    writer = OutcomeWriter(
        CountingScripts(await app.redis()), app.keys, app.settings, "w", settled.append
    )
    for message, job in zip(messages, jobs, strict=True):
        writer.put(outcome(app, message, job.id))
    writer.close()
    await writer.run()
    assert calls == [5]
    assert [len(keys) for keys in settled] == [5]
    assert [await j.result(timeout=1) for j in jobs] == [42] * 5


async def test_writer_sends_start_marks_and_outcomes_in_one_round_trip(app: App) -> None:
    """Marks queued before outcomes share their round trip, marks first.

    A short job then costs one call for its start and its end: a mark whose
    job's outcome is in the same flush goes with that outcome to ``complete``
    (no ``start`` call at all), and is written all the same: the started
    event before the succeeded one, and the mark's fields in the job hash.
    A mark whose job is still running goes to ``start`` in the same round trip.
    """

    @app.task(name="t")
    async def t() -> None: ...

    job, running = await t.enqueue_many([(), ()])
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, "w", 100)
    message, still = await fetcher.fetch(2)
    round_trips: list[list[tuple[str, int]]] = []
    stride = {"start": 6, "complete": 14}  # values per job after the call's own

    class CountingScripts(Scripts):
        async def run_many(self, many):  # type: ignore[no-untyped-def, override]
            round_trips.append([(name, len(args) // stride[name]) for name, (_, args) in many])
            return await super().run_many(many)

    writer = OutcomeWriter(CountingScripts(await app.redis()), app.keys, app.settings, "w", list)
    writer.start([started(app, message, job.id), started(app, still, running.id)])
    writer.put(outcome(app, message, job.id))
    writer.close()
    await writer.run()
    assert round_trips == [[("start", 1), ("complete", 1)]]  # 1 mark went with its outcome
    assert await job.result(timeout=1) == 42
    redis = await app.redis()
    events = [e for _, e in await redis.xrange(app.keys.events)]
    mine = [e[b"kind"] for e in events if e[b"job"] == job.id.encode()]
    assert mine == [b"enqueued", b"started", b"succeeded"]
    assert await running.status() is JobStatus.RUNNING
    fields = await redis.hgetall(app.keys.job(job.id))
    assert fields[b"status"] == b"succeeded"
    assert fields[b"worker"] == b"w" and fields[b"attempts"] == b"1"
    assert fields[b"msg_id"] == message.msg_id and b"started_ms" in fields
    assert sorted(v for k, v in fields.items() if k.startswith(b"ev:")) == [
        b"enqueued",
        b"started",
        b"succeeded",
    ]


async def test_marks_of_running_jobs_wait_for_their_own_outcomes(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush of some jobs' outcomes keeps the marks of jobs still running (while
    younger than START_LINGER_S) for their own outcomes: a batch whose jobs end
    one flush apart costs no start call at all, and every mark is still written."""
    monkeypatch.setattr(outcome_module, "START_LINGER_S", 30.0)  # no flush by age here

    @app.task(name="t")
    async def t() -> None: ...

    first, second = await t.enqueue_many([(), ()])
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, "w", 100)
    one, two = await fetcher.fetch(2)
    round_trips: list[list[str]] = []
    flushed = anyio.Event()

    class CountingScripts(Scripts):
        async def run_many(self, many):  # type: ignore[no-untyped-def, override]
            round_trips.append([name for name, _ in many])
            replies = await super().run_many(many)
            flushed.set()
            return replies

    writer = OutcomeWriter(CountingScripts(await app.redis()), app.keys, app.settings, "w", list)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        writer.start([started(app, one, first.id), started(app, two, second.id)])
        writer.put(outcome(app, one, first.id))
        await flushed.wait()
        writer.put(outcome(app, two, second.id))
        writer.close()
    assert round_trips == [["complete"], ["complete"]]
    redis = await app.redis()
    kinds = [(e[b"job"], e[b"kind"]) for _, e in await redis.xrange(app.keys.events)]
    for job in (first, second):
        assert [k for j, k in kinds if j == job.id.encode()] == [
            b"enqueued",
            b"started",
            b"succeeded",
        ]


@pytest.mark.parametrize("status", ["succeeded", "retry", "failed"])
async def test_complete_writes_a_carried_mark_as_start_would(app: App, status: str) -> None:
    """A mark carried by its outcome (``started_ms``) is written by ``complete`` as
    ``start`` writes it: the same started event, the same hash fields, before
    the outcome's, and the outcome's own fields win (a retry's ``msg_id`` names
    its next message). Compared field by field with a separate start call."""

    @app.task(name="t")
    async def t() -> None: ...

    carried, separate = await t.enqueue_many([(), ()])
    first = await fetch_one(app, "w")
    (second,) = await Fetcher(
        await app.redis(), await app.scripts(), app.keys, app.settings, "w", 100
    ).fetch(1)
    assert await mark_started(app, "w", started(app, second, separate.id)) == 1
    both, other = outcome(app, first, carried.id, status), outcome(app, second, separate.id, status)
    both.priority = other.priority = "default"  # as the worker's outcomes carry it
    both.started_ms = 1
    assert await complete(app, "w", both, other) == [RECORDED, RECORDED]
    assert await complete(app, "w", both) == [ALREADY_RECORDED]  # a client retry: no mark again
    redis = await app.redis()
    events = [e for _, e in await redis.xrange(app.keys.events)]

    def story(job_id: str) -> list[dict[bytes, bytes]]:
        return [
            {k: v for k, v in e.items() if k not in (b"job", b"ts", b"msg", b"dlq", b"dlq_id")}
            for e in events
            if e[b"job"] == job_id.encode()
        ]

    assert story(carried.id) == story(separate.id)
    assert [e[b"kind"] for e in story(carried.id)][1] == b"started"
    a = await redis.hgetall(app.keys.job(carried.id))
    b = await redis.hgetall(app.keys.job(separate.id))
    varying = (b"id", b"msg_id", b"started_ms", b"outcome_msg", b"dlq_id", b"due_ms")
    assert {k: v for k, v in a.items() if not k.startswith(b"ev:") and k not in varying} == {
        k: v for k, v in b.items() if not k.startswith(b"ev:") and k not in varying
    }
    assert sorted(v for k, v in a.items() if k.startswith(b"ev:")) == sorted(
        v for k, v in b.items() if k.startswith(b"ev:")
    )
    assert a.keys() - b.keys() == {k for k in a if k.startswith(b"ev:")} - b.keys()
    assert a[b"started_ms"] == b"1"
    if status == "retry":
        assert a[b"msg_id"] not in (first.msg_id, b"")
    else:
        assert a[b"msg_id"] == first.msg_id


async def test_a_carried_mark_is_fenced_like_start(app: App) -> None:
    """Invariant 3 for a carried mark: a worker that lost the message writes neither
    its outcome nor its mark (no started event from it), and a job that is already
    final gets no mark either (a late mark never resurrects a finished job)."""

    @app.task(name="t")
    async def t() -> None: ...

    (job,) = await t.enqueue_many([()])
    message = await fetch_one(app, "w")
    redis = await app.redis()
    await redis.xclaim(message.stream, GROUP, "other", 0, [message.msg_id])
    late = outcome(app, message, job.id)
    late.started_ms = 1
    assert await complete(app, "w", late) == [LOST]
    kinds = [e[b"kind"] for _, e in await redis.xrange(app.keys.events)]
    assert b"started" not in kinds
    assert (await redis.hget(app.keys.job(job.id), "status")) == b"queued"
    await redis.hset(app.keys.job(job.id), "status", "cancelled")
    claimed = Message(message.stream, "default", message.msg_id, None, 3)  # two XCLAIMs
    mine = outcome(app, claimed, job.id)
    mine.started_ms = 1
    await redis.xclaim(message.stream, GROUP, "w", 0, [message.msg_id])
    assert await complete(app, "w", mine) == [RECORDED]
    kinds = [e[b"kind"] for _, e in await redis.xrange(app.keys.events)]
    assert b"started" not in kinds


async def test_flush_starts_waits_for_marks_already_being_written(app: App) -> None:
    """A progress report must not overtake its job's mark while the writer sends it.

    Once the writer has taken the marks off its queue, nothing is queued; if
    flush_starts then returned at once, the handler's progress call (on another
    connection) could reach Redis before the mark and be refused as "not running".
    """

    @app.task(name="t")
    async def t() -> None: ...

    (job,) = await t.enqueue_many([()])
    message = await fetch_one(app, "w")
    entered, gate = anyio.Event(), anyio.Event()

    class SlowScripts(Scripts):
        async def run_many(self, many):  # type: ignore[no-untyped-def, override]
            entered.set()
            await gate.wait()
            return await super().run_many(many)

    writer = OutcomeWriter(SlowScripts(await app.redis()), app.keys, app.settings, "w", list)
    flushed = anyio.Event()

    async def flush() -> None:
        await writer.flush_starts()
        flushed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        writer.start([started(app, message, job.id)])
        try:
            await entered.wait()  # the mark is in flight, the queue is empty
            tg.start_soon(flush)
            await anyio.wait_all_tasks_blocked()
            assert not flushed.is_set()
        finally:
            gate.set()  # the writer's write is shielded: let it end either way
            writer.close()
        with anyio.fail_after(10):
            await flushed.wait()
        assert await job.status() == JobStatus.RUNNING


async def fetch_many(app: App, consumer: str, count: int) -> list[Message]:
    fetcher = Fetcher(await app.redis(), await app.scripts(), app.keys, app.settings, consumer, 500)
    await fetcher.ensure_groups()
    messages: list[Message] = []
    while len(messages) < count:
        messages += await fetcher.fetch(count - len(messages))
    return messages


async def test_a_batch_fence_read_cut_short_still_finds_each_message(app: App) -> None:
    """complete.lua reads a batch's fence with one XPENDING over the consumer's
    entries from the batch's lowest id to its highest, asking for a bounded
    number of rows. When the consumer holds many more entries in that range
    (its other running jobs), the read is cut short: each message it did not
    return is then asked for alone, so none of the batch reads as lost."""

    @app.task(name="t")
    async def t() -> None: ...

    jobs = await t.enqueue_many([()] * 300)
    messages = await fetch_many(app, "worker-a", 300)
    first, last = messages[0], messages[-1]
    replies = await complete(
        app, "worker-a", outcome(app, first, jobs[0].id), outcome(app, last, jobs[-1].id)
    )
    assert replies == [RECORDED, RECORDED]
    for job in (jobs[0], jobs[-1]):
        assert (await job.info())["status"] == "succeeded"
    redis = await app.redis()
    summary = await redis.xpending(first.stream, GROUP)
    assert summary["pending"] == 298  # both acked, the 298 others still running


async def test_a_batch_fence_sorts_out_each_message_on_its_own(app: App) -> None:
    """One batch holding a message of this consumer, one another consumer took,
    one delivered again since, the same message twice and a malformed id: each
    gets its own answer, and the batch's good outcomes are recorded."""

    @app.task(name="t")
    async def t() -> None: ...

    jobs = await t.enqueue_many([()] * 3)
    ours, taken, redelivered = await fetch_many(app, "worker-a", 3)
    redis = await app.redis()
    await redis.xclaim(taken.stream, GROUP, "worker-b", 0, [taken.msg_id])
    await redis.xclaim(redelivered.stream, GROUP, "worker-a", 0, [redelivered.msg_id])
    malformed = Message(ours.stream, ours.priority, b"not-an-id", ours.fields, 1)
    replies = await complete(
        app, "worker-a",
        outcome(app, ours, jobs[0].id), outcome(app, taken, jobs[1].id),
        outcome(app, redelivered, jobs[2].id), outcome(app, ours, jobs[0].id),
        outcome(app, malformed, jobs[0].id),
    )  # fmt: skip
    assert replies == [RECORDED, LOST, LOST, ALREADY_RECORDED, LOST]
    assert (await jobs[0].info())["status"] == "succeeded"
    # A malformed id leading the batch makes the ranged read fail: each message
    # is then read alone.
    fresh_job = await t.enqueue()
    fresh = await fetch_one(app, "worker-a")
    replies = await complete(
        app, "worker-a", outcome(app, malformed, jobs[0].id), outcome(app, fresh, fresh_job.id)
    )
    assert replies == [LOST, RECORDED]
    pending = await redis.xpending_range(ours.stream, GROUP, "-", "+", 10)
    assert sorted((p["message_id"], p["consumer"]) for p in pending) == sorted(
        [(taken.msg_id, b"worker-b"), (redelivered.msg_id, b"worker-a")]
    )


async def test_success_after_a_retry_clears_the_failed_attempts_error(app: App) -> None:
    """The failed attempt's error, traceback and due time leave the hash when a
    later attempt succeeds (complete.lua clears them when the hash holds them)."""

    @app.task(name="t")
    async def t() -> None: ...

    job = await t.enqueue()
    first = await fetch_one(app, "worker-a")
    retry = outcome(app, first, job.id, "retry")
    assert await complete(app, "worker-a", retry) == [RECORDED]
    redis = await app.redis()
    assert await redis.hget(app.keys.job(job.id), "error_type") == b"ValueError"
    second = await fetch_one(app, "worker-a")
    assert second.msg_id != first.msg_id
    assert await complete(app, "worker-a", outcome(app, second, job.id)) == [RECORDED]
    left = await redis.hmget(
        app.keys.job(job.id), ["status", "error_type", "error", "traceback", "due_ms"]
    )
    assert left == [b"succeeded", None, None, None, None]


@pytest.mark.parametrize(
    ("a", "b", "before"),
    [
        ("5-1", "5-2", True),
        ("5-9", "5-10", True),
        ("5-10", "5-9", False),
        ("5-10", "6-1", True),
        ("6-1", "5-10", False),
        ("9-0", "10-0", True),
        ("10-0", "9-99", False),
        ("1764460000000-9", "1764460000000-10", True),
        ("1764460000001-0", "1764460000000-10", False),
        ("5-1", "5-1", False),
        ("not-an-id", "5-1", False),
        ("5-1", "nonsense", False),
    ],
)
async def test_the_fence_orders_stream_ids_as_numbers(
    app: App, a: str, b: str, before: bool
) -> None:
    """The batch's span is found by comparing ids as '<ms>-<seq>' numbers, not as text."""
    source = _expand("--#include fence\nreturn id_before(ARGV[1], ARGV[2]) and 1 or 0")
    assert await (await app.redis()).eval(source, 0, a, b) == int(before)
