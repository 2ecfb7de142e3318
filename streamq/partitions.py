"""Partitioned queues: one queue spread over N hash tags, so a hot queue spreads
over a Redis Cluster's masters.

``App("emails", partitions=8)``: partition 0 keeps the queue's own tag
``{emails}``, partition i >= 1 uses ``{emails#i}`` (queue names cannot
contain '#'), each with its own streams, delayed set, DLQ, events and job
hashes. One partition is therefore exactly the plain layout, and going from
1 to N keeps every queued job where it is.

Each partition is a ``Partition``: a view of the App sharing its connection,
scripts, tasks, settings and serializer, with its own ``keys``, result
waiters and ``node_redis()``. Everything written per queue (fetching, the
janitor, stats, the DLQ, replay, cancel, details) runs unchanged on a view;
callers loop over the partitions.

Routing at enqueue (first rule that applies): a chained job (``after=``)
goes to its parents' partition; a unique job (``key=``) by its unique key, so
uniqueness holds; ``with_options(partition_key=...)`` or the task's
``partition_by="arg"`` by that key (same key, same partition: per-key order);
a fixed job id (``with_options(job_id=...)``, cron ticks) by the id, so its
dedup holds; otherwise round-robin from a random start. Keys hash with
CRC-32 of their UTF-8 bytes, never Python's per-process ``hash()``.

The high-water mark (``Keyspace.partitions`` in partition 0) holds the
largest partition count ever used. Producers write only to their configured
count; workers, janitors and the ops tools cover ``max(configured, mark)``,
so shrinking is safe: the partitions beyond the new count drain. ``streamq
queue partitions APP --reset`` lowers the mark once they are empty.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
from redis.asyncio import Redis

from streamq.app import App
from streamq.errors import ConfigError, QueueFull
from streamq.job import Job, JobUpdate
from streamq.keys import GROUP
from streamq.settings import MAX_PARTITIONS
from streamq.waiters import ResultWaiters

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from streamq.cancel import CancelResult
    from streamq.delayed import RunNowResult
    from streamq.details import JobDetails
    from streamq.embedded import Embedded
    from streamq.job import JobProgress, JobStatus
    from streamq.scripts import Scripts
    from streamq.task import Task

R = TypeVar("R")
MARK_MEMBER = "count"
PLACES_KEPT = 10_000
"""Job id -> partition answers an App remembers (``app.job(id)`` lookups)."""


def stable_index(key: str, count: int) -> int:
    """The partition of a routing key: the same in every process and version."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % count


class Partition(App):
    """Partition ``index`` of ``root``: the root's connection, scripts, tasks,
    settings and serializer; its own keys (``{queue#index}``) and result waiters.

    Not built directly: ``app.partition(index)``. Cron schedules run from
    partition 0 only (the root), so a view has none.
    """

    def __init__(self, root: App, index: int) -> None:  # shares the root's state instead
        self.root = root
        self.partition_index = index
        self.partitions = root.partitions
        self.name = root.name
        self.lifespan = root.lifespan
        self.middleware = root.middleware
        self._enqueue_hooks = root._enqueue_hooks
        self.settings = root.settings
        self.keys = root.keys.partition(index)
        self.serializer = root.serializer
        self.tasks = root.tasks
        self.schedules = {}
        self.default_priority = root.default_priority
        self._redis = None
        self._scripts = None
        self._embedded = None
        self._nodes = None
        self._connect_lock = anyio.Lock()
        self._partition_state = None
        self.result_waiters = ResultWaiters(self)

    def __repr__(self) -> str:
        return f"App({self.name!r}, partition={self.partition_index})"

    async def redis(self) -> Redis:
        return await self.root.redis()

    async def scripts(self) -> Scripts:
        from streamq import durable

        if (held := durable.held(self)) is not None:  # this partition's durable enqueue
            return held
        return await self.root.scripts()

    async def node_redis(self) -> Redis:
        return await self.root.node_redis_for(self.keys.events)

    @property
    def embedded_server(self) -> Embedded | None:
        return self.root.embedded_server

    async def close(self) -> None:
        """Only the view's own result waiters: the connection is the root's."""
        await self.result_waiters.aclose()

    def partition(self, index: int) -> App:
        return self.root.partition(index)

    def job(self, job_id: str) -> Job[Any]:
        return Job(self, job_id)


class State:
    """An App's partition bookkeeping: views, the round-robin counter, job places."""

    def __init__(self, app: App) -> None:
        self.views: dict[int, App] = {0: app}
        self.next_rr = random.randrange(max(1, app.partitions))
        self.places: OrderedDict[str, int] = OrderedDict()
        self.recorded = False
        self.known = app.partitions
        """The largest partition count this App has seen (configured or the mark)."""

    def round_robin(self, count: int) -> int:
        index = self.next_rr % count
        self.next_rr = index + 1
        return index

    def place(self, job_id: str, index: int) -> None:
        self.places[job_id] = index
        self.places.move_to_end(job_id)
        while len(self.places) > PLACES_KEPT:
            self.places.popitem(last=False)


def state_of(app: App) -> State:
    root = app.root
    if root._partition_state is None:
        root._partition_state = State(root)
    return cast(State, root._partition_state)


def partition_of(app: App, index: int) -> App:
    """The view of partition ``index`` (the App itself for 0); made once."""
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_PARTITIONS:
        raise ConfigError(f"partition must be an integer from 0 to {MAX_PARTITIONS - 1}")
    state = state_of(app)
    view = state.views.get(index)
    if view is None:
        view = state.views[index] = Partition(app.root, index)
    return view


# -- the high-water mark -------------------------------------------------------------


async def read_mark(app: App) -> int:
    """The largest partition count recorded for the queue (0: none recorded)."""
    redis = await app.redis()
    score = await redis.zscore(app.root.keys.partitions, MARK_MEMBER)
    return 0 if score is None else int(score)


async def record_count(app: App) -> None:
    """Raise the mark to this App's configured count (once per App; ZADD GT)."""
    root = app.root
    state = state_of(root)
    if state.recorded or root.partitions <= 1:
        return
    redis = await root.redis()
    await redis.zadd(root.keys.partitions, {MARK_MEMBER: root.partitions}, gt=True)
    state.recorded = True


async def covered(app: App) -> int:
    """How many partitions workers and ops tools cover: max(configured, the mark)."""
    root = app.root
    await record_count(root)
    count = max(root.partitions, await read_mark(root))
    state = state_of(root)
    state.known = max(state.known, count)
    return count


async def all_partitions(app: App) -> list[App]:
    """Every partition to cover, partition 0 (the App) first."""
    return [app.root.partition(i) for i in range(await covered(app))]


async def unfinished(view: App) -> dict[str, int]:
    """What partition ``view`` still holds that would be stranded if nobody read it:
    unread and pending stream entries, delayed and deferred jobs, DLQ entries."""
    redis = await view.redis()
    counts: dict[str, int] = {"unread": 0, "pending": 0}
    for stream in view.streams:
        if not await redis.exists(stream):
            continue
        groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
        group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        length = int(await redis.xlen(stream))
        if group is None:
            counts["unread"] += length
            continue
        counts["pending"] += int(group.get("pending") or 0)
        lag = group.get("lag")
        counts["unread"] += length if lag is None else int(lag)
    counts["delayed"] = int(await redis.zcard(view.keys.delayed))
    counts["deferred"] = int(await redis.hlen(view.keys.deferred))
    counts["dlq"] = int(await redis.xlen(view.keys.dlq))
    return counts


async def reset_mark(app: App) -> tuple[int, dict[int, dict[str, int]]]:
    """Lower the mark to the configured count if every partition beyond it is empty.

    Returns the mark now and, when refused, what each non-empty partition holds.
    """
    root = app.root
    mark = await read_mark(root)
    busy: dict[int, dict[str, int]] = {}
    for index in range(root.partitions, mark):
        held = await unfinished(root.partition(index))
        if any(held.values()):
            busy[index] = held
    if busy:
        return mark, busy
    redis = await root.redis()
    if root.partitions > 1:
        await redis.zadd(root.keys.partitions, {MARK_MEMBER: root.partitions})
    else:
        await redis.delete(root.keys.partitions)
    state_of(root).known = root.partitions
    return root.partitions, {}


# -- finding a job's partition ---------------------------------------------------------


def spread(app: App) -> bool:
    """Whether this App's jobs may live in more than one partition."""
    return state_of(app).known > 1


async def locate(app: App, job_ids: Iterable[str]) -> dict[str, int | None]:
    """The partition holding each job's hash (None: in none), probing every covered
    partition in one pipelined round trip; answers are remembered."""
    root = app.root
    state = state_of(root)
    found: dict[str, int | None] = {}
    missing = []
    for job_id in dict.fromkeys(job_ids):
        if job_id in state.places:
            found[job_id] = state.places[job_id]
        else:
            missing.append(job_id)
    if not missing:
        return found
    count = await covered(root)
    if count == 1:
        return {**found, **dict.fromkeys(missing, 0)}
    redis = await root.redis()
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in missing:
            for index in range(count):
                pipe.exists(root.partition(index).keys.job(job_id))
        replies = await pipe.execute()
    for n, job_id in enumerate(missing):
        row = replies[n * count : (n + 1) * count]
        hit = next((i for i, exists in enumerate(row) if exists), None)
        found[job_id] = hit
        if hit is not None:
            state.place(job_id, hit)
    return found


async def group_by_partition(app: App, job_ids: Iterable[str]) -> dict[int, list[str]]:
    """Job ids by the partition holding them; ids found nowhere go with partition 0
    (where a per-partition operation reports them as not found)."""
    groups: dict[int, list[str]] = {}
    for job_id, index in (await locate(app, job_ids)).items():
        groups.setdefault(index or 0, []).append(job_id)
    return groups


class LocatingJob(Job[R]):
    """A job by id whose partition is found on first use (``app.job(id)`` on a
    partitioned App): one pipelined EXISTS per partition, then remembered."""

    __slots__ = ("_placed",)

    def __init__(self, app: App, job_id: str, task: str | None = None) -> None:
        super().__init__(app, job_id, task)
        self._placed = False

    async def _place(self) -> None:
        if self._placed:
            return
        index = (await locate(self._app, [self.id]))[self.id]
        if index is not None:
            self._app = self._app.root.partition(index)
            self._placed = True

    async def info(self) -> dict[str, str]:
        await self._place()
        return await super().info()

    async def event_ids(self) -> list[tuple[str, str]]:
        await self._place()
        return await super().event_ids()

    async def progress(self) -> JobProgress | None:
        await self._place()
        return await super().progress()

    async def status(self) -> JobStatus:
        await self._place()
        return await super().status()

    async def result(self, timeout: float | None = None) -> R:
        await self._place()
        return await super().result(timeout)

    async def watch(self, timeout: float | None = None) -> AsyncIterator[JobUpdate]:
        await self._place()
        async for update in super().watch(timeout):
            yield update

    async def details(self) -> JobDetails:
        await self._place()
        return await super().details()

    async def cancel(self) -> CancelResult:
        await self._place()
        return await super().cancel()

    async def run_now(self) -> RunNowResult:
        await self._place()
        return await super().run_now()


def job_handle(app: App, job_id: str) -> Job[Any]:
    """``app.job(id)``: a plain handle when the queue has one partition."""
    state = state_of(app)
    index = state.places.get(job_id)
    if index is not None:
        return Job(app.root.partition(index), job_id)
    if not spread(app):
        return Job(app, job_id)
    return LocatingJob(app, job_id)


async def cancel_jobs(app: App, job_ids: Iterable[str], *, by: str = "api") -> dict[str, Any]:
    """``streamq.cancel.cancel_jobs`` over the partitions holding the jobs."""
    from streamq.cancel import cancel_jobs as cancel_in

    ids = list(dict.fromkeys(job_ids))
    results: dict[str, Any] = {}
    for index, group in (await group_by_partition(app, ids)).items():
        results.update(await cancel_in(app.root.partition(index), group, by=by))
    return {job_id: results[job_id] for job_id in ids}


async def run_now(app: App, job_ids: Iterable[str], *, by: str = "api") -> dict[str, Any]:
    """``streamq.delayed.run_now`` over the partitions holding the jobs."""
    from streamq.delayed import run_now as run_in

    ids = list(dict.fromkeys(job_ids))
    results: dict[str, Any] = {}
    for index, group in (await group_by_partition(app, ids)).items():
        results.update(await run_in(app.root.partition(index), group, by=by))
    return {job_id: results[job_id] for job_id in ids}


# -- routing at enqueue ------------------------------------------------------------------


def _key_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def routing_key(task: Task[Any, Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The value of the task's ``partition_by`` argument in one call, as text."""
    name = task.options.partition_by
    assert name is not None
    bound = task.signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return _key_text(bound.arguments.get(name))


async def _parents_partition(app: App, parents: Sequence[str]) -> int:
    places = await locate(app, parents)
    indexes = {index for index in places.values() if index is not None}
    if len(indexes) > 1:
        spread_over = ", ".join(f"{p} in {i}" for p, i in places.items() if i is not None)
        raise ConfigError(
            "a chained job's parents must share one partition (give them the same "
            f"partition_key); they are in different ones: {spread_over}"
        )
    return indexes.pop() if indexes else 0  # none found: partition 0 reports JobNotFound


async def enqueue_routed(
    app: App,
    task: Task[Any, Any, Any],
    calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
    *,
    job_id: str | None,
    due_ms: int,
    delay_ms: int,
) -> list[Job[Any]]:
    """Send each call to its partition (see the module's routing rules): one
    ``enqueue_calls`` per partition, concurrently; jobs come back in call order."""
    root = app.root
    await record_count(root)
    count = root.partitions
    options = task.options
    fixed: int | None = None
    if options.after:
        fixed = await _parents_partition(root, options.after)
    elif options.unique is not None:
        fixed = stable_index(options.unique.key, count)
    elif options.partition_key is not None:
        fixed = stable_index(options.partition_key, count)
    elif options.partition_by is None and job_id is not None:
        fixed = stable_index(job_id, count)
    state = state_of(root)
    if fixed is not None:
        groups = {fixed: list(range(len(calls)))}
    else:
        groups = {}
        for position, (args, kwargs) in enumerate(calls):
            if options.partition_by is not None:
                task.check_arguments(args, kwargs)
                index = stable_index(routing_key(task, args, kwargs), count)
            else:
                index = state.round_robin(count)
            groups.setdefault(index, []).append(position)
        if len(groups) > 1:
            for args, kwargs in calls:  # a bad call writes nothing in any partition
                root._encode(task, args, kwargs)
    results: dict[int, list[Job[Any]]] = {}
    refused: dict[int, QueueFull] = {}

    async def send(index: int, positions: list[int]) -> None:
        try:
            results[index] = await root.partition(index).enqueue_calls(
                task, [calls[p] for p in positions], job_id=job_id, due_ms=due_ms,
                delay_ms=delay_ms, routed=True,
            )  # fmt: skip
        except QueueFull as exc:
            refused[index] = exc

    if len(groups) == 1:
        ((index, positions),) = groups.items()
        await send(index, positions)
    else:
        async with anyio.create_task_group() as tg:
            for index, positions in groups.items():
                tg.start_soon(send, index, positions)
    jobs: list[Job[Any] | None] = [None] * len(calls)
    for index, placed in results.items():
        for position, job in zip(groups[index], placed, strict=True):
            jobs[position] = job
            state.place(job.id, index)
    if refused:
        first = next(iter(refused.values()))
        accepted = [job for job in jobs if job is not None]
        accepted += [job for exc in refused.values() for job in exc.accepted]
        raise QueueFull(root.name, first.depth, first.limit, accepted)
    return cast(list[Job[Any]], jobs)
