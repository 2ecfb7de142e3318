"""Recording starts and outcomes: batched, fenced, and shielded from cancellation.

The fetch loop hands each fetched batch's "started" marks, and handlers their
outcomes, to one writer task through queues. The writer takes whatever has
queued up (up to ``max_batch`` outcomes) and records it in one round trip: a
``start`` script call for the marks, then one ``complete`` call for the
outcomes. Under load many acks share a round trip; at low load a single ack
goes out at once. Marks alone wait up to ``START_LINGER_S`` for outcomes to
share their round trip: a short job then costs one call for its start and
end, and no job waits for its mark to be written before it runs. A mark whose
job's outcome is in the batch goes with it to ``complete`` (no ``start`` call);
the marks of jobs still running wait for their own outcomes too, as long as they
are younger than ``START_LINGER_S``. A handler
that reports progress first has its mark flushed (``flush_starts``). The call
runs shielded: a job that ran is recorded even while the worker is being
cancelled.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import anyio

from streamq.keys import GROUP, Keyspace
from streamq.logging import get_logger
from streamq.scripts import Arg, Outcome, Scripts, Started
from streamq.settings import Settings
from streamq.worker.fetch import Message

LOST, RECORDED, ALREADY_RECORDED = 0, 1, 2
PARENT = 3
"""complete.lua: recorded, final, and chained children wait on the job."""
# How long "started" marks wait for outcomes to share their round trip: the
# most a job's status can lag behind it starting.
START_LINGER_S = 0.01


class OutcomeWriter:
    def __init__(
        self,
        scripts: Scripts,
        keys: Keyspace,
        settings: Settings,
        consumer: str,
        on_settled: Callable[[list[tuple[str, bytes]]], None],
        max_batch: int = 200,
        on_recorded: Callable[[Outcome, bool], None] | None = None,
        on_delayed: Callable[[int], None] | None = None,
        on_parents: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._scripts = scripts
        self._keys = keys
        self._settings = settings
        self._consumer = consumer
        self._on_settled = on_settled
        self._max_batch = max_batch
        self._on_recorded = on_recorded
        self._on_delayed = on_delayed
        """Told the delay (ms) of each retry recorded into the delayed set."""
        self._on_parents = on_parents
        """Told the ids of final jobs whose chained children wait (``worker.children``)."""
        self._log = get_logger(queue=keys.queue, worker=consumer)
        self._queue: deque[Outcome] = deque()
        self._starts: list[Started] = []
        self._starts_ms = 0
        self._starts_at = 0.0  # time.monotonic() when the oldest queued mark came
        self._starts_flushed = anyio.Event()
        self._marks_in_flight: anyio.Event | None = None  # set once the in-flight write ends
        self._urgent = False  # a handler waits for the marks (progress)
        self._wake = anyio.Event()
        self._waiting = False
        self._closed = False

    def put(self, outcome: Outcome) -> None:
        """Queue one outcome; never blocks (the queue is bounded by the worker's concurrency)."""
        if self._closed:
            raise RuntimeError("outcome writer is closed")
        self._queue.append(outcome)
        self._notify()

    def start(self, started: list[Started]) -> None:
        """Queue "started" marks for fetched jobs (written before their outcomes)."""
        if not self._starts:
            self._starts_ms = int(time.time() * 1000)
            self._starts_at = time.monotonic()
        self._starts += started
        self._notify()

    async def flush_starts(self) -> None:
        """Return once every mark queued so far is written (or its write failed)."""
        if self._starts:
            flushed = self._starts_flushed
            self._urgent = True
            self._notify()
            await flushed.wait()
        elif self._marks_in_flight is not None:
            # Taken off the queue but not yet written: wait for that round trip.
            await self._marks_in_flight.wait()

    def close(self) -> None:
        """Nothing more comes: ``run`` records what is queued, then returns."""
        self._closed = True
        self._notify()

    def _notify(self) -> None:
        if self._waiting:
            self._waiting = False
            self._wake.set()

    async def _sleep(self, timeout_s: float | None = None) -> None:
        self._wake = anyio.Event()
        self._waiting = True
        with anyio.move_on_after(timeout_s):
            await self._wake.wait()

    async def run(self) -> None:
        queue = self._queue
        while True:
            if not queue and not self._starts:
                if self._closed:
                    return
                await self._sleep()
                continue
            if not queue and not self._urgent and not self._closed:
                linger_s = self._starts_at + START_LINGER_S - time.monotonic()
                if linger_s > 0:
                    await self._sleep(linger_s)
                    continue
            starts, self._starts = self._starts, []
            flushed, self._starts_flushed = self._starts_flushed, anyio.Event()
            urgent, self._urgent = self._urgent, False
            batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            if starts and batch:
                starts = self._merge_marks(starts, batch)
                if starts and not urgent and not self._closed and self._young_marks():
                    # Marks of jobs still running wait for their own outcomes (within
                    # the linger) instead of costing a start call beside these.
                    self._starts = starts
                    starts = []
            self._marks_in_flight = flushed if starts else None
            with anyio.CancelScope(shield=True):
                try:
                    await self._flush(starts, batch)
                finally:
                    self._marks_in_flight = None
                    flushed.set()

    async def _flush(self, starts: list[Started], batch: list[Outcome]) -> None:
        calls: list[tuple[str, tuple[list[str], list[Arg]]]] = []
        events = self._keys.events
        if starts:
            calls.append(
                (
                    "start",
                    Scripts.start_call(
                        events,
                        starts,
                        group=GROUP,
                        worker=self._consumer,
                        now_ms=self._starts_ms,
                    ),  # fmt: skip
                )
            )
        if batch:
            calls.append(
                (
                    "complete",
                    Scripts.complete_call(
                        events, batch, delayed=self._keys.delayed, dlq=self._keys.dlq,
                        group=GROUP, consumer=self._consumer, now_ms=int(time.time() * 1000),
                        result_ttl_ms=int(self._settings.result_ttl_s * 1000),
                    ),
                )
            )  # fmt: skip
        try:
            results = await self._scripts.run_many(calls)
            if starts and isinstance(results[0], Exception):
                # Only the status and the started events are missing: the jobs
                # run (and are recorded) all the same.
                self._log.warning(
                    "jobs not marked started", jobs=len(starts), error=str(results[0])
                )
            if not batch:
                return
            if isinstance(results[-1], Exception):
                raise results[-1]
            replies = [int(r) for r in results[-1]]
        except Exception as exc:  # RedisError, or a value Redis refused to encode
            if not batch:
                self._log.warning("jobs not marked started", jobs=len(starts), error=str(exc))
                return
            # Not recorded: the messages stay pending (un-acked), never lost;
            # reclaiming them is the janitor's duty. Log and go on.
            for o in batch:
                self._log.error(
                    "job outcome not recorded; its message stays pending",
                    job_id=o.job_id, task=o.task, attempt=o.attempt,
                    duration_ms=o.duration_ms, error=str(exc),
                )  # fmt: skip
            self._on_settled([(o.stream, o.msg_id) for o in batch])
            return
        if PARENT in replies:
            parents = [o.job_id for o, r in zip(batch, replies, strict=True) if r == PARENT]
            replies = [RECORDED if r == PARENT else r for r in replies]
            if self._on_parents is not None:
                self._on_parents(parents)
        info = self._log.enabled_for(logging.INFO)  # once per batch, not per job
        for o, reply in zip(batch, replies, strict=True):
            if self._on_recorded is not None and reply != ALREADY_RECORDED:
                self._on_recorded(o, reply == RECORDED)
            if reply == RECORDED and o.status == "retry" and self._on_delayed is not None:
                self._on_delayed(o.retry_delay_ms)
            if reply != LOST and o.status == "succeeded":
                if info:
                    self._log.info(
                        "job succeeded", job_id=o.job_id, task=o.task, attempt=o.attempt,
                        duration_ms=o.duration_ms,
                    )  # fmt: skip
                continue
            context = {
                "job_id": o.job_id, "task": o.task, "attempt": o.attempt,
                "duration_ms": o.duration_ms,
            }  # fmt: skip
            if reply == LOST:
                self._log.warning(
                    "job lost ownership; its outcome was dropped", outcome=o.status, **context
                )
            elif o.status == "retry":
                self._log.warning(
                    "job retried", error_type=o.result_or_error_type, error=o.error,
                    retry_in_ms=o.retry_delay_ms, **context,
                )  # fmt: skip
            else:
                self._log.error(
                    "job failed", error_type=o.result_or_error_type, error=o.error, **context
                )
        self._on_settled([(o.stream, o.msg_id) for o in batch])

    def _young_marks(self) -> bool:
        """Whether the queued marks may still wait for outcomes (START_LINGER_S)."""
        return time.monotonic() - self._starts_at < START_LINGER_S

    def _merge_marks(self, starts: list[Started], batch: list[Outcome]) -> list[Started]:
        """Hand each mark whose job's outcome is in ``batch`` to that outcome; the rest.

        ``complete`` then writes the mark with the outcome (same fence, same
        event, one hash write): a short job's start and end cost one script
        step instead of two.
        """
        finished = {(o.stream, o.msg_id): o for o in batch}
        rest: list[Started] = []
        for mark in starts:
            outcome = finished.get((mark.stream, mark.msg_id))
            if outcome is not None and outcome.deliveries == mark.deliveries:
                outcome.started_ms = self._starts_ms
            else:
                rest.append(mark)
        return rest


async def move_to_dlq(
    scripts: Scripts,
    keys: Keyspace,
    settings: Settings,
    consumer: str,
    message: Message,
    reason: str,
    job_id: str | None,
    task: str | None,
    error_type: str = "PoisonMessage",
    result_ttl_ms: int | None = None,
) -> bool:
    """Dead-letter one message that cannot run; False when it is no longer ours.

    ``result_ttl_ms``: how long the job hash is kept (default: the App's result TTL).
    """
    with anyio.CancelScope(shield=True):
        dlq_id = await scripts.dead(
            stream=message.stream,
            dlq=keys.dlq,
            events=keys.events,
            # The job hash key must be a real key of this queue even when the
            # entry has no usable id (it is then not touched).
            job_key=keys.job(job_id or f"msg-{message.msg_id.decode()}"),
            group=GROUP,
            consumer=consumer,
            msg_id=message.msg_id,
            deliveries=message.deliveries,
            reason=reason,
            now_ms=int(time.time() * 1000),
            result_ttl_ms=(
                int(settings.result_ttl_s * 1000) if result_ttl_ms is None else result_ttl_ms
            ),
            job_id=job_id,
            task=task,
            error_type=error_type,
        )
    return dlq_id is not None
