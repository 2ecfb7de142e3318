"""Worker: fetch, run, record, inside one task group.

One fetch loop picks messages (``fetch``: own pending ones first, then
reclaimed ones, then new ones in strict priority order) and starts each as a
handler task, up to ``concurrency`` at once (``execute``). One writer records
outcomes in batches (``outcome``); a heartbeat keeps held messages from being
reclaimed (``heartbeat``); the janitor's singleton duties run beside them
(``streamq.janitor``). ``stop()`` (or a signal, see ``shutdown``) ends the
fetching; in-flight handlers get ``grace_s`` to finish before they are
cancelled and left pending.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from streamq.app import App
from streamq.caps import JobCaps
from streamq.connection import held
from streamq.decide import (
    Decision,
    admit,
    decide,
    max_retries_for,
    result_ttl_for,
    retry_intervals_for,
)
from streamq.envelope import Envelope, PoisonMessage, UnverifiedEntry, decode
from streamq.errors import ConfigError
from streamq.janitor import Janitor
from streamq.lifespan import lifespan_state
from streamq.logging import get_logger
from streamq.metrics import WorkerMetrics
from streamq.middleware import JobHooks
from streamq.progress import DeferredContext, JobContext, reset_current, set_current
from streamq.scripts import Outcome, Scripts, Started
from streamq.signing import owned_job, verifier_for
from streamq.worker.burst import BURST_HORIZON_S, BurstCheck
from streamq.worker.cancel import CancelWatcher
from streamq.worker.children import ChildRelease
from streamq.worker.deadlines import Deadlines
from streamq.worker.execute import (
    Execution,
    describe_message,
    execute,
    load_arguments,
    safe_text,
)
from streamq.worker.fetch import Fetcher, Message
from streamq.worker.heartbeat import Heartbeat
from streamq.worker.limited import Limiter
from streamq.worker.outcome import OutcomeWriter, move_to_dlq
from streamq.worker.partitions import (
    Lane,
    MultiFetcher,
    assigned,
    check_assignment,
    grow_lanes,
    lanes_by_stream,
    start_services,
)
from streamq.worker.shutdown import Watchdog, stop_on_signals
from streamq.worker.soon import SoonDue
from streamq.worker.threads import HandlerThreads
from streamq.worker.unknown import MAX_BOUNCES, hand_back, unknown_task_hint

__all__ = ["BURST_HORIZON_S", "MAX_BOUNCES", "Worker", "unknown_task_hint"]

_RECONNECT_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
_WRITER_DRAIN_S = 30.0


def consumer_name() -> str:
    """host:pid:random — unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """A consumer-group worker for one App.

    Args:
        concurrency: handlers running at once (async tasks, or threads for sync ones).
        grace_s: on stop, how long in-flight handlers may take to finish.
        block_ms: how long an idle fetch blocks (kept under the socket timeout).
        burst: stop by itself once no job is waiting, delayed or in flight.
        handle_signals: stop gracefully on SIGTERM/SIGINT (for the CLI).
        consumer: consumer name; reuse one across restarts to finish its own
            pending messages first (default: a fresh ``host:pid:random``).
        janitor: also run the janitor's singleton duties (under a lease).
        metrics: Prometheus metrics to update (``streamq.metrics.WorkerMetrics``).
        partitions: the partitions of a partitioned queue to read (default: all;
            ``streamq.worker.partitions``).
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
        janitor: bool = True,
        metrics: WorkerMetrics | None = None,
        partitions: Sequence[int] | None = None,
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
        self.run_janitor = janitor
        self.metrics = metrics
        self.stopping = False
        self.processed = 0
        self.exit_code = 0
        """128 + the signal's number after a second signal forced the stop (the CLI's code)."""
        self.watchdog = Watchdog()
        self._running = 0
        self._unsettled = 0  # fetched and not yet recorded (or dropped)
        self._changed = anyio.Event()
        self._ready: deque[Message] = deque()
        self._idle: deque[anyio.Event] = deque()  # one per runner waiting for a message
        self._waking = False  # a runner was woken for ready messages and has not run yet
        self._fetch_scope: anyio.CancelScope | None = None
        self._jobs_scope: anyio.CancelScope | None = None
        self._decoded: dict[tuple[str, bytes], Envelope] = {}
        self._log = get_logger(queue=app.name, worker=self.consumer)
        self._burst = BurstCheck(app, self._log)
        self._hooks = JobHooks.of(app.middleware)
        self._verifier = verifier_for(app.settings.signing_keys, app.settings.require_signatures)
        self._caps = JobCaps.from_settings(app.settings)
        self._state: Any = None  # what the App's lifespan yielded
        self._limits = Limiter(app, self.consumer, self._log)
        self._task_ttl_ms: dict[str, int] = {}  # result TTL of jobs that carry no override
        self._cancels = CancelWatcher(app, self.consumer, metrics)
        self.partitions = None if partitions is None else check_assignment(partitions)
        self._lanes: dict[str, Lane] = {}  # by stream key; set by run()
        self._deadlines = Deadlines()  # handler timeouts: one watcher, no timer per job

    # -- control -----------------------------------------------------------------

    def stop(self, grace_s: float | None = None) -> None:
        """Stop fetching; in-flight jobs get ``grace_s`` (default: the worker's) to finish."""
        self.stopping = True
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        if self._jobs_scope is not None:
            grace = self.grace_s if grace_s is None else grace_s
            self._jobs_scope.deadline = min(self._jobs_scope.deadline, anyio.current_time() + grace)
        self._wake_runners()
        self._notify()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until ``stop()``, a signal, or (burst) an empty queue.

        Use ``await tg.start(worker.run)`` to continue once the worker is ready.
        The App's lifespan is entered before the first fetch and exited after
        the last outcome is recorded (``streamq.lifespan``).
        """
        app = self.app
        views = await assigned(app, self.partitions)
        async with contextlib.AsyncExitStack() as clients:
            self._clients = clients  # every lane's held connections, added ones too
            async with lifespan_state(app, self._log) as self._state:
                await self._run(views, task_status)

    async def _open_lane(self, app: App) -> Lane:
        """A lane for partition ``app``, its fetch and write connections held until
        ``run`` ends (``add_lanes`` opens lanes for partitions added later)."""
        redis = await self._clients.enter_async_context(held(await app.node_redis()))
        write_client = await self._clients.enter_async_context(held(await app.node_redis()))
        return self._lane(app, redis, write_client, *self._lane_kit)

    def _lane(
        self, app: App, redis: Redis, write_client: Redis, visibility_ms: dict[str, int],
        pooled: Scripts,
    ) -> Lane:  # fmt: skip
        """One partition's fetcher, heartbeat, writer, limiter, cancel watcher and janitor."""
        fetcher = Fetcher(
            redis, Scripts(redis), app.keys, app.settings, self.consumer, self.block_ms,
            visibility_ms,
        )  # fmt: skip
        own = app is self.app
        soon, children = SoonDue(app, self._log), ChildRelease(app, self._log)
        limits = self._limits if own else Limiter(app, self.consumer, self._log)
        limits.on_delayed = soon.note  # a rate slot due soon: promoted when due
        return Lane(
            app, fetcher,
            Heartbeat(
                pooled,  # the pooled client: never behind the fetch loop's blocking read
                fetcher.streams, self.consumer, max(0.05, fetcher.min_visibility_s / 3), app.name,
            ),
            OutcomeWriter(
                Scripts(write_client), app.keys, app.settings, self.consumer, self._settled,
                on_recorded=self._recorded if self.metrics else None, on_delayed=soon.note,
                on_parents=children.note,
            ),
            limits,
            self._cancels if own else CancelWatcher(app, self.consumer, self.metrics),
            self._burst if own else BurstCheck(app, self._log),
            Janitor(app, self.consumer) if self.run_janitor else None,
            soon, children,
        )  # fmt: skip

    async def _run(self, views: list[App], task_status: anyio.abc.TaskStatus[None]) -> None:
        app = self.app
        visibility_ms = {
            name: int(t.options.visibility_timeout_s * 1000)
            for name, t in app.tasks.items()
            if t.options.visibility_timeout_s is not None
        }
        self._lane_kit = (visibility_ms, await app.scripts())
        lanes = [await self._open_lane(view) for view in views]
        self._lanes = lanes_by_stream(lanes)
        fetcher: Fetcher | MultiFetcher = (
            lanes[0].fetcher
            if len(lanes) == 1
            else MultiFetcher(lanes, app.settings.priorities, self.consumer)
        )
        await fetcher.ensure_groups()
        self._fetcher = fetcher
        self._threads = HandlerThreads(self.concurrency, name=f"streamq-handler:{self.consumer}")
        self._loop_token = anyio.lowlevel.current_token()
        self._log.info(
            "worker started", concurrency=self.concurrency, tasks=sorted(app.tasks),
            priorities=list(app.settings.priorities), janitor=self.run_janitor,
        )  # fmt: skip
        async with anyio.create_task_group() as services:
            self._services = services
            services.start_soon(self._deadlines.run)
            if self.partitions is None:  # reads every partition: also ones added later
                services.start_soon(grow_lanes, self)
            for lane in lanes:
                await start_services(services, lane)
            if self.handle_signals:
                await services.start(stop_on_signals, self)
            if self.metrics is not None:
                services.start_soon(self.metrics.run_sampler)
            async with anyio.create_task_group() as recording:
                self._recording = recording
                for lane in lanes:
                    recording.start_soon(lane.writer.run)
                try:
                    async with anyio.create_task_group() as jobs:
                        self._jobs_scope = jobs.cancel_scope
                        for _ in range(self.concurrency):
                            jobs.start_soon(self._runner)
                        task_status.started()
                        with anyio.CancelScope() as self._fetch_scope:
                            if not self.stopping:
                                await self._fetch_loop(fetcher)
                        self.stopping = True
                        self._wake_runners()
                        jobs.cancel_scope.deadline = min(
                            jobs.cancel_scope.deadline, anyio.current_time() + self.grace_s
                        )
                finally:
                    # Handlers are done (or cancelled and left pending): the
                    # writer records what is queued and returns.
                    for lane in dict.fromkeys(self._lanes.values()):  # added ones too
                        lane.writer.close()
                recording.cancel_scope.deadline = anyio.current_time() + _WRITER_DRAIN_S
            services.cancel_scope.cancel()
        self._threads.close()
        self._log.info("worker stopped", processed=self.processed)
        # Everything the worker owned has ended; the watchdog's bound was for that.
        self.watchdog.cancel()

    # -- fetching ------------------------------------------------------------------

    async def _fetch_loop(self, fetcher: Fetcher | MultiFetcher) -> None:
        failures = 0
        interval_s = self.app.settings.janitor_interval_s
        next_reclaim = time.monotonic()
        refill = max(1, min(self.concurrency // 4, 50))
        ready = self._ready
        idle = False  # the last blocking wait emptied every stream: block again, skip fetch
        while not self.stopping:
            fetcher = self._fetcher  # grow_lanes may swap in one over more partitions
            free = self.concurrency - self._running - len(ready)
            if free <= 0 or (self._running and free < refill):
                # Saturated: wait for a batch's worth of free slots, so a busy
                # worker fetches many messages per round trip instead of one
                # each time a single job finishes.
                await self._wait_change()
                continue
            try:
                batch: list[Message] = []
                if fetcher.draining:
                    batch = await fetcher.drain(free)
                elif time.monotonic() >= next_reclaim:
                    # Jittered: workers that all block until their next pass would
                    # otherwise keep one order of blocked readers, and Redis serves
                    # the longest blocked first, so one worker would take every
                    # message a promote or hand-back puts in a stream.
                    next_reclaim = time.monotonic() + interval_s * random.uniform(0.75, 1.25)
                    batch = await fetcher.reclaim(free)
                    if self.metrics is not None:
                        self.metrics.reclaimed(len(batch))
                if not batch and not fetcher.draining and not idle:
                    batch = await fetcher.fetch(free)
                if not batch and not fetcher.draining:
                    if self.burst:
                        if await self._burst_done():
                            return
                        await self._wait_change(timeout_s=min(interval_s, 0.2))
                        continue
                    # Wake for the next reclaim pass rather than block past it.
                    until_reclaim_ms = int((next_reclaim - time.monotonic()) * 1000)
                    batch, more = await fetcher.wait(free, until_reclaim_ms)
                    idle = not more
                else:
                    idle = False
                if not batch:
                    continue
                for message in batch:
                    self._hold(message)
                self._mark_started(batch)
                self._dispatch(batch)
                failures = 0
            except RedisError as exc:
                delay = _RECONNECT_BACKOFF_S[min(failures, len(_RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                self._log.warning("fetch failed; retrying", error=str(exc), retry_in_s=delay)
                await anyio.sleep(delay)

    def _dispatch(self, batch: list[Message]) -> None:
        """Hand fetched messages to the runners: wake one, which wakes the next."""
        self._ready.extend(batch)
        self._wake_one()

    def _wake_one(self) -> None:
        """Wake one idle runner, unless one is woken already and has not yet run.

        A runner that takes a message while more are ready wakes the next one
        before it runs its job, so every ready message finds a runner as soon as
        the one before it yields; a job that never yields (a no-op) lets its
        runner take the next message itself, and no runner is woken for nothing.
        Waking one runner per message instead cost every short job a wake-up,
        a new Event and a wait of a runner that then found nothing to do.
        """
        if not self._waking and self._idle:
            self._waking = True
            self._idle.popleft().set()

    async def _runner(self) -> None:
        """One of ``concurrency`` long-lived runners: take a ready message, run it, repeat.

        Long-lived runners instead of a task per job: spawning and joining a
        task (and its cancel scope) per job cost more than a no-op job itself.
        """
        ready = self._ready
        while True:
            while not ready:
                if self.stopping:
                    return
                woken = anyio.Event()
                self._idle.append(woken)
                await woken.wait()
                self._waking = False
            # Even while stopping: a fetched message was marked started, so it
            # runs (within the grace period) rather than waiting for a reclaim.
            message = ready.popleft()
            if ready:
                self._wake_one()  # for the rest, in case this job yields
            self._running += 1
            await self._run_one(message)

    def _decode(self, fields: Mapping[bytes, bytes] | None) -> Envelope:
        """The entry's envelope, its signature and per-job caps checked (PoisonMessage)."""
        return decode(fields, self._verifier, self._caps)

    def _wake_runners(self) -> None:
        while self._idle:
            self._idle.popleft().set()

    async def _burst_done(self) -> bool:
        if self._unsettled > 0 or self._ready:
            return False
        for lane in dict.fromkeys(self._lanes.values()):
            if not await lane.burst.queue_done():
                return False
        return True

    def _hold(self, message: Message) -> None:
        self._unsettled += 1
        if self._lanes:
            self._lanes[message.stream].heartbeat.hold(message)

    def _mark_started(self, messages: list[Message]) -> None:
        """Queue the batch's "started" marks with the writer (it writes them before outcomes)."""
        started: dict[Lane, list[Started]] = {}
        for m in messages:
            try:
                env = self._decode(m.fields)
            except PoisonMessage:
                continue
            self._decoded[(m.stream, m.msg_id)] = env  # decoded once, used by _process
            if env.task not in self.app.tasks or env.task in self._limits.policies:
                continue  # not ours to run, or not yet admitted: its status must not say running
            lane = self._lanes[m.stream]
            started.setdefault(lane, []).append(
                Started(
                    m.stream,
                    m.msg_id,
                    lane.app.keys.job(env.job_id),
                    env.job_id,
                    env.task,
                    env.attempt,
                    m.priority,
                    m.deliveries,
                )
            )
        for lane, marks in started.items():
            lane.writer.start(marks)

    # -- running one job -----------------------------------------------------------

    async def _run_one(self, message: Message) -> None:
        handed_off = False
        try:
            handed_off = await self._process(message)
        except Exception as exc:
            # A bug of ours must not take the worker down with every job it
            # holds: the message stays pending and is reclaimed (and, if it
            # keeps failing like this, dead-lettered past max_deliveries).
            self._log.exception(
                "message not processed; it stays pending", msg_id=message.msg_id.decode(),
                stream=message.stream, error=safe_text(describe_message(exc)),
            )  # fmt: skip
        finally:
            self._running -= 1
            if not handed_off:
                self._settled([(message.stream, message.msg_id)])
            self._notify()

    async def _process(self, message: Message) -> bool:
        """Run one message; True when its outcome went to the writer.

        decode → admit → run → decide; the writer records.
        """
        lane = self._lanes[message.stream]
        app = lane.app  # the message's partition
        try:
            env = self._decoded.pop((message.stream, message.msg_id), None) or self._decode(
                message.fields
            )
        except UnverifiedEntry as refused:
            job_id = await owned_job(
                await app.redis(), app.keys, refused.claimed_id, message.msg_id
            )
            await self._dead_letter(message, refused.reason, job_id, None)
            return False
        except PoisonMessage as poison:
            await self._dead_letter(message, poison.reason, poison.job_id, poison.task)
            return False
        task = app.tasks.get(env.task)
        options = task.options if task is not None else None
        reason = admit(env, options, message.deliveries, app.settings)
        if reason is not None:
            await self._dead_letter(
                message, reason, env.job_id, env.task, "TooManyDeliveries", env=env
            )
            return False
        if task is None:
            await self._unknown_task(message, env)
            return False
        try:
            args, kwargs = load_arguments(app.serializer, env, task)
        except PoisonMessage as poison:
            await self._dead_letter(message, poison.reason, env.job_id, env.task, env=env)
            return False
        timeout_s = env.timeout_s or task.options.timeout_s or app.settings.task_timeout_s
        deferred = DeferredContext(
            app, env.job_id, env.task, env.attempt, message.deliveries, self.consumer,
            lane.writer.flush_starts, self._loop_token,
            stream=message.stream, msg_id=message.msg_id, headers=env.headers, state=self._state,
            deadline=None if timeout_s is None else time.monotonic() + timeout_s,
        )  # fmt: skip
        # An async handler without middleware hooks gets its JobContext built only if
        # it asks (current_job()) or a cancel request reaches it: most never do.
        full = None if task.is_async and self._hooks is None else deferred.get()
        context = deferred if full is None else full
        overran = None  # only a sync handler can overrun (an async one is cancelled)
        if not task.is_async:
            assert full is not None
            overran = functools.partial(self._overran, full, env, timeout_s)
        held = None
        if env.task in lane.limits.policies:
            held = await lane.limits.admit(message, env, args, kwargs)
            if held is None:
                return False  # deferred until its limit allows it
            lane.writer.start([lane.limits.started(message, env)])
        token = set_current(context)  # nothing that may raise between admit and the try
        result: Execution | None = None
        try:
            with lane.cancels.watch(context, task.is_async) as watched:
                result = await execute(
                    task, args, kwargs, app.serializer, self._threads, timeout_s,
                    app.settings.max_result_bytes, overran, self._hooks, full, watched,
                    self._deadlines,
                )  # fmt: skip
        finally:
            reset_current(token)
            if held is not None:
                await lane.limits.release(held)
        self.processed += 1
        if watched.requested and (result is None or not result.ok):  # cancelled: not retried
            duration_ms = None if result is None else result.duration_ms
            await lane.cancels.record(message, env, watched, duration_ms, self._result_ttl_ms(env))
            return False
        assert result is not None  # only a cancel request's scope ends a run without one
        max_retries = max_retries_for(env, task.options, app.settings.max_retries)
        decision = decide(
            result, attempt=env.attempt, max_retries=max_retries, options=task.options,
            intervals_s=() if result.ok else retry_intervals_for(env, task.options),
        )  # fmt: skip
        lane.writer.put(self._outcome(message, env, decision, result))
        return True

    def _overran(self, context: JobContext, env: Envelope, timeout_s: float | None) -> None:
        """A sync handler ran past its timeout: tell it, and say so."""
        context.request_stop(f"ran past its timeout of {timeout_s} s")
        self._log.warning(
            "sync handler ran past its timeout; it keeps its slot until it returns",
            job_id=env.job_id, task=env.task, attempt=env.attempt, timeout_s=timeout_s,
        )  # fmt: skip

    def _outcome(
        self, message: Message, env: Envelope, decision: Decision, result: Execution
    ) -> Outcome:
        delay_s = decision.delay_s
        return Outcome(
            stream=message.stream,
            job_key=self._lanes[message.stream].app.keys.job(env.job_id),
            msg_id=message.msg_id,
            deliveries=message.deliveries,
            job_id=env.job_id,
            task=env.task,
            attempt=env.attempt,
            status=decision.status,
            result_or_error_type=result.result if result.ok else result.error_type,
            error=result.error,
            traceback=result.traceback,
            duration_ms=result.duration_ms,
            retry_delay_ms=0 if delay_s is None else int(delay_s * 1000),
            priority=message.priority,
            result_ttl_ms=self._result_ttl_ms(env),
        )

    def _result_ttl_ms(self, env: Envelope | None) -> int:
        """The job's result TTL: its entry's override, its task's option, the App's
        (worked out once per task: this runs for every job)."""
        if env is not None and env.result_ttl_s is None:
            cached = self._task_ttl_ms.get(env.task)
            if cached is not None:
                return cached
        task = self.app.tasks.get(env.task) if env is not None else None
        seconds = result_ttl_for(
            env, task.options if task is not None else None, self.app.settings.result_ttl_s
        )
        ms = max(1, int(seconds * 1000))
        if env is not None and env.result_ttl_s is None:
            self._task_ttl_ms[env.task] = ms
        return ms

    async def _unknown_task(self, message: Message, env: Envelope) -> None:
        app = self._lanes[message.stream].app
        reason = await hand_back(app, self.consumer, message, env, self._log)
        if reason is not None:
            await self._dead_letter(message, reason, env.job_id, env.task, "UnknownTask", env=env)

    async def _dead_letter(
        self,
        message: Message,
        reason: str,
        job_id: str | None,
        task: str | None,
        error_type: str = "PoisonMessage",
        env: Envelope | None = None,
    ) -> None:
        log = self._log.bind(
            job_id=job_id, task=task, attempt=None, duration_ms=0,
            msg_id=message.msg_id.decode(), stream=message.stream, deliveries=message.deliveries,
        )  # fmt: skip
        try:
            keys = self._lanes[message.stream].app.keys
            moved = await move_to_dlq(
                await self.app.scripts(), keys, self.app.settings, self.consumer,
                message, reason, job_id, task, error_type,
                result_ttl_ms=self._result_ttl_ms(env),
            )  # fmt: skip
        except RedisError as exc:
            log.error(
                "message not moved to the DLQ; it stays pending", reason=reason, error=str(exc)
            )
            return
        if moved:
            log.warning("message moved to the DLQ", reason=reason, error_type=error_type)
            if self.metrics is not None:
                self.metrics.outcome(task or "?", "dead", 0)
        else:
            log.warning("message lost ownership before it reached the DLQ", reason=reason)

    # -- bookkeeping ---------------------------------------------------------------

    def _recorded(self, outcome: Outcome, recorded: bool) -> None:
        assert self.metrics is not None
        name = {"succeeded": "succeeded", "retry": "retried", "failed": "failed"}[outcome.status]
        self.metrics.outcome(outcome.task, name if recorded else "lost", outcome.duration_ms)

    def _settled(self, keys: list[tuple[str, bytes]]) -> None:
        self._unsettled -= len(keys)
        if self._lanes:
            for stream, msg_id in keys:
                self._lanes[stream].heartbeat.release(stream, msg_id)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_change(self, timeout_s: float | None = None) -> None:
        self._changed = anyio.Event()
        with anyio.move_on_after(timeout_s):
            await self._changed.wait()

    @property
    def in_flight(self) -> int:
        return self._running

    def stats(self) -> dict[str, Any]:
        return {"processed": self.processed, "running": self._running, "unsettled": self._unsettled}
