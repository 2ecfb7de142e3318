"""Cancel requests for the jobs this worker runs: watch, stop, record.

``Job.cancel()`` on a job a worker holds records a request in the queue's
cancels zset (``scripts/cancel.lua``); a script cannot stop a handler. Each
worker's watcher asks, every ``POLL_S`` while it runs jobs, whether any of
them was asked to stop: one ``ZMSCORE`` with their ids, never a scan. A
matched async handler's run is cancelled through the scope that already
bounds it by its timeout (``execute`` attaches it: no second cancel scope
per job), so middleware's ``on_error`` sees ``HandlerCancelled``; a sync
handler, which cannot be interrupted, is told through its context
(``JobContext.cancel_requested`` and ``stop_requested``).

The worker then records the job ``cancelled`` through a fenced script
(``scripts/cancelled.lua``: acked, never retried, never dead-lettered) when
the handler was cancelled or failed after the request; a handler that
returned a value all the same (a sync one that ignored the request) is
recorded as it ended: succeeded. A request for a job that is not running
here stays in the zset for the worker that runs it next (after a reclaim,
or the job's next attempt); the janitor drops requests nobody took up.
"""

from __future__ import annotations

import time
from types import TracebackType

import anyio
from redis.exceptions import RedisError

from streamq.app import App
from streamq.envelope import Envelope
from streamq.keys import GROUP
from streamq.logging import get_logger
from streamq.metrics import WorkerMetrics
from streamq.progress import DeferredContext, JobContext
from streamq.worker.fetch import Message

POLL_S = 0.5
"""How often running jobs are checked for cancel requests: a cancelled async
handler stops within about this long (plus a round trip)."""


class Watched:
    """One running job under watch: a context manager around the handler's execution.

    A plain class, not a generator context manager: it is entered once per job.
    """

    __slots__ = ("_running", "context", "is_async", "requested", "scope", "started")

    def __init__(
        self, running: set[Watched], context: JobContext | DeferredContext, is_async: bool
    ) -> None:
        self._running = running
        self.context = context
        self.is_async = is_async
        self.scope: anyio.CancelScope | None = None
        """The scope that bounds the handler by its timeout (``attach``): cancelling
        it stops the run, with no second cancel scope per job."""
        self.started = time.perf_counter()
        self.requested = False
        """A cancel request reached this run."""

    def attach(self, scope: anyio.CancelScope) -> None:
        """Called by ``execute`` with the run's timeout scope (``RunControl``)."""
        self.scope = scope
        if self.requested and self.is_async:
            scope.cancel()  # the request came before the handler started

    def stop(self) -> None:
        """Cancel an async run (at its next await); a sync one is told by its context."""
        self.requested = True
        self.context.request_cancel()
        if self.is_async and self.scope is not None:
            self.scope.cancel()

    def __enter__(self) -> Watched:
        self._running.add(self)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._running.discard(self)


class CancelWatcher:
    def __init__(
        self, app: App, consumer: str, metrics: WorkerMetrics | None = None, poll_s: float = POLL_S
    ) -> None:
        self._app = app
        self._consumer = consumer
        self._metrics = metrics
        self.poll_s = poll_s
        self._running: set[Watched] = set()
        self._log = get_logger(queue=app.name, worker=consumer)

    def watch(self, context: JobContext | DeferredContext, is_async: bool) -> Watched:
        """Run the body (the handler's execution) where a cancel request can stop it:
        ``with watcher.watch(context, is_async) as watched: ...``, then check
        ``watched.requested``."""
        return Watched(self._running, context, is_async)

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.poll_s)
            await self.poll()

    async def poll(self) -> None:
        """Stop every run of a job that has a cancel request."""
        if not self._running:
            return
        runs: dict[str, list[Watched]] = {}
        for watched in self._running:
            runs.setdefault(watched.context.job_id, []).append(watched)
        ids = list(runs)
        try:
            redis = await self._app.redis()
            scores = await redis.zmscore(self._app.keys.cancels, ids)
        except RedisError as exc:
            self._log.warning("cancel requests not checked; retrying", error=str(exc))
            return
        for job_id, score in zip(ids, scores, strict=True):
            if score is None:
                continue
            for watched in runs[job_id]:
                if watched.requested or watched not in self._running:
                    continue  # already told, or ended during the round trip
                watched.stop()
                self._log.info(
                    "job cancelled on request; stopping it" if watched.is_async
                    else "job cancelled on request; its sync handler was told to stop",
                    job_id=job_id, task=watched.context.task, attempt=watched.context.attempt,
                    duration_ms=_ms_since(watched.started),
                )  # fmt: skip

    async def record(
        self, message: Message, env: Envelope, watched: Watched, duration_ms: int | None,
        result_ttl_ms: int,
    ) -> bool:  # fmt: skip
        """Record the job ``cancelled`` (fenced), its hash kept ``result_ttl_ms`` (the
        job's own, as its outcome would have had); False when the message is no longer ours."""
        app = self._app
        ms = duration_ms if duration_ms is not None else _ms_since(watched.started)
        log = self._log.bind(job_id=env.job_id, task=env.task, attempt=env.attempt, duration_ms=ms)
        try:
            with anyio.CancelScope(shield=True):  # it stopped: say so, even while shutting down
                reply = await (await app.scripts()).cancelled(
                    stream=message.stream, events=app.keys.events,
                    job_key=app.keys.job(env.job_id), cancels=app.keys.cancels, group=GROUP,
                    consumer=self._consumer, msg_id=message.msg_id,
                    deliveries=message.deliveries, job_id=env.job_id, task=env.task,
                    attempt=env.attempt, now_ms=int(time.time() * 1000),
                    result_ttl_ms=result_ttl_ms, duration_ms=ms,
                )  # fmt: skip
        except RedisError as exc:
            log.error("cancelled job not recorded; its message stays pending", error=str(exc))
            return False
        if reply == 0:
            log.warning("job lost ownership; its cancellation was dropped")
            return False
        log.info("job cancelled")
        if self._metrics is not None and reply == 1:
            self._metrics.outcome(env.task, "cancelled", ms)
        return True


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
