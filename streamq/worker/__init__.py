"""Worker: fetch, run, record, inside one task group.

One fetcher reads messages (``fetch``), starts each as a handler task up to
``concurrency`` at once (``execute``), and one writer records outcomes in
batches (``outcome``). ``stop()`` (or a signal, see ``shutdown``) ends the
fetching; in-flight handlers get ``grace_s`` to finish before they are
cancelled and left pending.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
from collections import deque
from typing import Any

import anyio
from anyio.abc import ObjectSendStream, TaskGroup
from redis.exceptions import RedisError

from streamq.app import App
from streamq.envelope import PoisonMessage, decode
from streamq.errors import ConfigError
from streamq.logging import get_logger
from streamq.scripts import Outcome, Scripts, Started
from streamq.worker.execute import Execution, execute, load_arguments
from streamq.worker.fetch import Fetcher, Message
from streamq.worker.outcome import OutcomeWriter, move_to_dlq
from streamq.worker.shutdown import stop_on_signals

__all__ = ["Worker"]

_RECONNECT_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def consumer_name() -> str:
    """host:pid:random — unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """A consumer-group worker for one App.

    Args:
        concurrency: handlers running at once (async tasks, or threads for sync ones).
        grace_s: on stop, how long in-flight handlers may take to finish.
        block_ms: how long an idle fetch blocks (kept under the socket timeout).
        burst: stop by itself once no job is waiting and none is in flight.
        handle_signals: stop gracefully on SIGTERM/SIGINT (for the CLI).
    """

    def __init__(
        self,
        app: App,
        *,
        concurrency: int = 10,
        grace_s: float = 30.0,
        block_ms: int = 1000,
        burst: bool = False,
        handle_signals: bool = False,
        consumer: str | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if grace_s < 0:
            raise ConfigError(f"grace must be >= 0 seconds, got {grace_s!r}")
        if not 1 <= block_ms < app.settings.socket_timeout_s * 1000 / 2:
            raise ConfigError("block_ms must be >= 1 and well under the socket timeout")
        self.app = app
        self.concurrency = concurrency
        self.grace_s = grace_s
        self.block_ms = block_ms
        self.burst = burst
        self.handle_signals = handle_signals
        self.consumer = consumer or consumer_name()
        self.stopping = False
        self.processed = 0
        self._running = 0
        self._unsettled = 0  # fetched and not yet recorded (or dropped)
        self._changed = anyio.Event()
        self._fetch_scope: anyio.CancelScope | None = None
        self._jobs_scope: anyio.CancelScope | None = None
        self._log = get_logger(queue=app.name, worker=self.consumer)

    # -- control -----------------------------------------------------------------

    def stop(self, grace_s: float | None = None) -> None:
        """Stop fetching; in-flight jobs get ``grace_s`` (default: the worker's) to finish."""
        self.stopping = True
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        if self._jobs_scope is not None:
            grace = self.grace_s if grace_s is None else grace_s
            self._jobs_scope.deadline = min(self._jobs_scope.deadline, anyio.current_time() + grace)
        self._notify()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until ``stop()``, a signal, or (burst) an empty queue.

        Use ``await tg.start(worker.run)`` to continue once the worker is ready.
        """
        redis = await self.app.redis()
        scripts = await self.app.scripts()
        fetcher = Fetcher(
            redis,
            scripts,
            self.app.keys,
            self.app.settings.priorities,
            self.consumer,
            self.block_ms,
        )
        await fetcher.ensure_groups()
        writer = OutcomeWriter(
            scripts, self.app.keys, self.app.settings, self.consumer, self._settled
        )
        send, receive = anyio.create_memory_object_stream[Outcome](max_buffer_size=math.inf)
        self._thread_limiter = anyio.CapacityLimiter(self.concurrency)
        self._log.info(
            "worker started", concurrency=self.concurrency, tasks=sorted(self.app.tasks),
            priorities=list(self.app.settings.priorities),
        )  # fmt: skip
        async with anyio.create_task_group() as outer:
            outer.start_soon(writer.run, receive)
            if self.handle_signals:
                await outer.start(stop_on_signals, self)
            async with send, anyio.create_task_group() as jobs:
                self._jobs_scope = jobs.cancel_scope
                task_status.started()
                with anyio.CancelScope() as self._fetch_scope:
                    if not self.stopping:
                        await self._fetch_loop(fetcher, scripts, jobs, send)
                self.stopping = True
                jobs.cancel_scope.deadline = min(
                    jobs.cancel_scope.deadline, anyio.current_time() + self.grace_s
                )
                # Handlers are done (or cancelled and left pending); closing
                # `send` lets the writer record what is queued and exit.
            outer.cancel_scope.deadline = anyio.current_time() + 30  # writer drain bound
            if self.handle_signals:
                # The writer ends by itself; the signal listener does not.
                await self._wait_unsettled_zero(timeout_s=30)
                outer.cancel_scope.cancel()
        self._log.info("worker stopped", processed=self.processed)

    # -- fetching ------------------------------------------------------------------

    async def _fetch_loop(
        self, fetcher: Fetcher, scripts: Scripts, jobs: TaskGroup, send: ObjectSendStream[Outcome]
    ) -> None:
        ready: deque[Message] = deque()
        failures = 0
        while not self.stopping:
            try:
                if not ready:
                    free = self.concurrency - self._running
                    if free <= 0:
                        await self._wait_change()
                        continue
                    ready.extend(await fetcher.fetch(free))
                    if not ready:
                        if self.burst:
                            if self._unsettled == 0:
                                return
                            await self._wait_change()
                            continue
                        ready.extend(await fetcher.wait())
                        if not ready:
                            continue
                    await self._mark_started(scripts, ready)
                failures = 0
            except RedisError as exc:
                delay = _RECONNECT_BACKOFF_S[min(failures, len(_RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                self._log.warning("fetch failed; retrying", error=repr(exc), retry_in_s=delay)
                await anyio.sleep(delay)
                continue
            while ready and self._running < self.concurrency:
                message = ready.popleft()
                self._running += 1
                self._unsettled += 1
                jobs.start_soon(self._run_one, message, send)
            if ready:
                await self._wait_change()

    async def _mark_started(self, scripts: Scripts, messages: deque[Message]) -> None:
        started: list[Started] = []
        for m in messages:
            try:
                env = decode(m.fields)
            except PoisonMessage:
                continue
            started.append(
                Started(
                    self.app.keys.job(env.job_id), env.job_id, env.task, env.attempt, m.priority
                )
            )
        if started:
            await scripts.start(
                self.app.keys.events, started, int(time.time() * 1000), self.consumer,
                self.app.settings.events_maxlen,
            )  # fmt: skip

    # -- running one job -----------------------------------------------------------

    async def _run_one(self, message: Message, send: ObjectSendStream[Outcome]) -> None:
        handed_off = False
        try:
            handed_off = await self._process(message, send)
        finally:
            self._running -= 1
            if not handed_off:
                self._settled(1)
            self._notify()

    async def _process(self, message: Message, send: ObjectSendStream[Outcome]) -> bool:
        """Run one message; True when its outcome went to the writer."""
        app = self.app
        try:
            env = decode(message.fields)
            task = app.tasks.get(env.task)
            if task is None:
                raise PoisonMessage(f"unknown task {env.task!r}", env.job_id, env.task)
            args, kwargs = load_arguments(app.serializer, env)
        except PoisonMessage as poison:
            await self._dead_letter(message, poison)
            return False
        log = self._log.bind(job_id=env.job_id, task=env.task, attempt=env.attempt)
        log.debug("job started", priority=message.priority)
        timeout_s = env.timeout_s if env.timeout_s is not None else task.options.timeout_s
        max_retries = env.max_retries if env.max_retries is not None else task.options.max_retries
        result: Execution = await execute(
            task, args, kwargs, app.serializer, self._thread_limiter, timeout_s
        )
        first: bytes | str
        if result.ok:
            status, first = "succeeded", result.result
        else:
            retry = result.retryable and env.attempt <= max_retries
            status, first = ("retry" if retry else "failed"), result.error_type
        self.processed += 1
        with anyio.CancelScope(shield=True):
            await send.send(
                Outcome(
                    stream=message.stream,
                    job_key=app.keys.job(env.job_id),
                    msg_id=message.msg_id,
                    deliveries=message.deliveries,
                    job_id=env.job_id,
                    task=env.task,
                    attempt=env.attempt,
                    status=status,
                    result_or_error_type=first,
                    error=result.error,
                    traceback=result.traceback,
                    duration_ms=result.duration_ms,
                )
            )
        return True

    async def _dead_letter(self, message: Message, poison: PoisonMessage) -> None:
        log = self._log.bind(
            job_id=poison.job_id, task=poison.task, attempt=None, duration_ms=0,
            msg_id=message.msg_id.decode(), stream=message.stream,
        )  # fmt: skip
        try:
            moved = await move_to_dlq(
                await self.app.scripts(), self.app.keys, self.app.settings, self.consumer,
                message, poison.reason, poison.job_id, poison.task,
            )  # fmt: skip
        except RedisError as exc:
            log.error(
                "poison message not moved to the DLQ; it stays pending",
                reason=poison.reason,
                error=repr(exc),
            )
            return
        if moved:
            log.warning("poison message moved to the DLQ", reason=poison.reason)
        else:
            log.warning(
                "poison message lost ownership before it reached the DLQ", reason=poison.reason
            )

    # -- bookkeeping ---------------------------------------------------------------

    def _settled(self, count: int) -> None:
        self._unsettled -= count
        self._notify()

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_change(self) -> None:
        self._changed = anyio.Event()
        await self._changed.wait()

    async def _wait_unsettled_zero(self, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            while self._unsettled > 0:
                await self._wait_change()

    @property
    def in_flight(self) -> int:
        return self._running

    def stats(self) -> dict[str, Any]:
        return {"processed": self.processed, "running": self._running, "unsettled": self._unsettled}
