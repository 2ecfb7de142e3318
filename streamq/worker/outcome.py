"""Recording outcomes: batched, fenced, and shielded from cancellation.

Handlers hand their outcome to one writer task through a queue. The writer
takes whatever has queued up (up to ``max_batch``) and records it with
one ``complete`` script call, so under load many acks share a round trip and
at low load a single ack goes out at once. The call runs shielded: a job that
ran is recorded even while the worker is being cancelled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import anyio
from redis.exceptions import RedisError

from streamq.keys import GROUP, Keyspace
from streamq.logging import get_logger
from streamq.scripts import Outcome, Scripts
from streamq.settings import Settings
from streamq.worker.fetch import Message

LOST, RECORDED, ALREADY_RECORDED = 0, 1, 2


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
    ) -> None:
        self._scripts = scripts
        self._keys = keys
        self._settings = settings
        self._consumer = consumer
        self._on_settled = on_settled
        self._max_batch = max_batch
        self._on_recorded = on_recorded
        self._log = get_logger(queue=keys.queue, worker=consumer)
        self._queue: deque[Outcome] = deque()
        self._wake = anyio.Event()
        self._waiting = False
        self._closed = False

    def put(self, outcome: Outcome) -> None:
        """Queue one outcome; never blocks (the queue is bounded by the worker's concurrency)."""
        if self._closed:
            raise RuntimeError("outcome writer is closed")
        self._queue.append(outcome)
        if self._waiting:
            self._waiting = False
            self._wake.set()

    def close(self) -> None:
        """No more outcomes: ``run`` records what is queued, then returns."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closed:
                    return
                self._wake = anyio.Event()
                self._waiting = True
                await self._wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            with anyio.CancelScope(shield=True):
                await self._flush(batch)

    async def _flush(self, batch: list[Outcome]) -> None:
        try:
            replies = await self._scripts.complete(
                self._keys.events,
                batch,
                delayed=self._keys.delayed,
                dlq=self._keys.dlq,
                group=GROUP,
                consumer=self._consumer,
                now_ms=int(time.time() * 1000),
                result_ttl_ms=int(self._settings.result_ttl_s * 1000),
                events_maxlen=self._settings.events_maxlen,
            )
        except RedisError as exc:
            # Not recorded: the messages stay pending (un-acked), never lost;
            # reclaiming them is the janitor's duty. Log and go on.
            for o in batch:
                self._log.error(
                    "job outcome not recorded; its message stays pending",
                    job_id=o.job_id, task=o.task, attempt=o.attempt,
                    duration_ms=o.duration_ms, error=repr(exc),
                )  # fmt: skip
            self._on_settled([(o.stream, o.msg_id) for o in batch])
            return
        for o, reply in zip(batch, replies, strict=True):
            event = {"succeeded": "job succeeded", "failed": "job failed", "retry": "job retried"}[
                o.status
            ]
            context = {
                "job_id": o.job_id, "task": o.task, "attempt": o.attempt,
                "duration_ms": o.duration_ms,
            }  # fmt: skip
            if self._on_recorded is not None and reply != ALREADY_RECORDED:
                self._on_recorded(o, reply == RECORDED)
            if reply == LOST:
                self._log.warning(
                    "job lost ownership; its outcome was dropped", outcome=o.status, **context
                )
            elif o.status == "succeeded":
                self._log.info(event, **context)
            elif o.status == "retry":
                self._log.warning(
                    event, error_type=o.result_or_error_type, error=o.error,
                    retry_in_ms=o.retry_delay_ms, **context,
                )  # fmt: skip
            else:
                self._log.error(event, error_type=o.result_or_error_type, error=o.error, **context)
        self._on_settled([(o.stream, o.msg_id) for o in batch])


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
) -> bool:
    """Dead-letter one message that cannot run; False when it is no longer ours."""
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
            events_maxlen=settings.events_maxlen,
            result_ttl_ms=int(settings.result_ttl_s * 1000),
            job_id=job_id,
            task=task,
            error_type=error_type,
        )
    return dlq_id is not None
