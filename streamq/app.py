"""App: one queue's settings, task registry, Redis client and enqueue path."""

from __future__ import annotations

import datetime as dt
import inspect
import time
import warnings
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, Unpack, cast, overload

import anyio
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from streamq import chains, cluster, durable, embedded, sentinel
from streamq.caps import JobCaps
from streamq.connection import check_server, make_client
from streamq.cron import CatchUp, Schedule, TaskKeywords, check_handler, make_schedule
from streamq.envelope import HEADERS_FIELD, encode_headers
from streamq.errors import (
    ConfigError,
    PayloadTooLarge,
    QueueFull,
    SerializationError,
)
from streamq.ids import new_job_id
from streamq.job import Job
from streamq.keys import GROUP, Keyspace
from streamq.keytypes import wrong_types_named
from streamq.lifespan import Lifespan
from streamq.limits import Limit, LimitPolicy
from streamq.middleware import EnqueueHooks, Middleware, check_middleware
from streamq.options import (
    RESULT_TTL_FIELD,
    RETRY_INTERVALS_FIELD,
    override_fields,
    parse_intervals,
)
from streamq.retry import Retry
from streamq.revive import reviver
from streamq.scripts import Arg, Scripts, UniqueArgs
from streamq.serializers import JSONSerializer, Serializer
from streamq.settings import Settings, check_name
from streamq.signing import Signer, as_bytes, signer_for
from streamq.task import Task, TaskOptions, schedule_of
from streamq.unique import enqueue_unique
from streamq.waiters import ResultWaiters

_WARNED_MAIN: set[str] = set()  # __main__. task names already warned about, once each
QUEUE_FULL = -1  # enqueue.lua's reply code when max_pending is reached
# Jobs per enqueue script call: big enough to share the call's cost, small enough
# that one call keeps Redis busy for only a few milliseconds.
ENQUEUE_BATCH = 100
P = ParamSpec("P")
R = TypeVar("R")


class TaskDecorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Task[P, R, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R, R]: ...


class App:
    """A named queue: ``App("emails")`` owns every key under ``streamq:{emails}``.

    With no ``redis_url`` (argument or ``$STREAMQ_REDIS_URL``), the App uses
    the embedded valkey-server, starting it if no streamq process has yet.
    Use ``async with app:`` or ``await app.close()`` to release connections.

    ``lifespan``: ``fn(app)`` returning an async context manager that each
    worker enters before its first job and exits after its last; what it
    yields is ``current_job().state`` (see ``streamq.lifespan``).
    ``middleware``: hooks around every job and at enqueue, the first one
    outermost (see ``streamq.middleware``).
    """

    def __init__(
        self,
        name: str,
        *,
        redis_url: str | None = None,
        priorities: Sequence[str] | None = None,
        prefix: str | None = None,
        result_ttl: float | None = None,
        max_retries: int | None = None,
        visibility_timeout: float | None = None,
        max_pending: int | None = None,
        serializer: Serializer | None = None,
        settings: Settings | None = None,
        lifespan: Lifespan | None = None,
        middleware: Sequence[Middleware] = (),
        partitions: int | None = None,
    ) -> None:
        self.name = check_name("queue name", name)
        if lifespan is not None and not callable(lifespan):
            raise ConfigError(f"lifespan must be a function of the App, got {lifespan!r}")
        self.lifespan = lifespan
        """Entered once per worker around its run (``streamq.lifespan``)."""
        self.middleware = check_middleware(middleware)
        """Hooks around every job and at enqueue, outermost first (``streamq.middleware``)."""
        self._enqueue_hooks = EnqueueHooks.of(self.middleware)
        overrides: dict[str, Any] = {
            "redis_url": redis_url,
            "priorities": tuple(priorities) if priorities is not None else None,
            "prefix": prefix,
            "result_ttl_s": result_ttl,
            "max_retries": max_retries,
            "visibility_timeout_s": visibility_timeout,
            "max_pending": max_pending,
            "partitions": partitions,
        }
        if settings is None:
            settings = Settings.from_env(**overrides)
        else:
            settings = settings.with_changes(
                **{k: v for k, v in overrides.items() if v is not None}
            )
        self.settings = settings
        self.keys = Keyspace(settings.prefix, name)
        self.serializer: Serializer = serializer or JSONSerializer()
        self.tasks: dict[str, Task[Any, Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        """Cron and periodic schedules by task name; the janitor enqueues their ticks."""
        self._redis: Redis | None = None
        self._scripts: Scripts | None = None
        self._embedded: embedded.Embedded | None = None
        self._nodes: cluster.NodeClients | None = None
        self._connect_lock = anyio.Lock()
        self.result_waiters = ResultWaiters(self)
        """The one events-stream reader that every ``Job.result()`` of this App shares."""
        self.default_priority = (
            "default"
            if "default" in settings.priorities
            else settings.priorities[len(settings.priorities) // 2]
        )
        self.partitions = settings.partitions
        """Partitions producers write to (``streamq.partitions``); workers and ops tools
        also cover any beyond it that the queue used before (its high-water mark)."""
        self.partition_index = 0
        """Which partition of its queue this App object is (views: ``partition(i)``)."""
        self.root: App = self
        """The App whose partitions these are (itself, unless this is a partition view)."""
        self._partition_state: Any = None  # streamq.partitions.State, made on first use

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    @property
    def streams(self) -> list[str]:
        """The priority streams' keys, highest priority first."""
        return [self.keys.stream(p) for p in self.settings.priorities]

    def priority_of_stream(self, stream: str) -> str | None:
        """The priority whose stream key this is, or None for another key."""
        for priority in self.settings.priorities:
            if self.keys.stream(priority) == stream:
                return priority
        return None

    # -- task registry --------------------------------------------------------------

    @overload
    def task(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Task[P, R, Coroutine[Any, Any, R]]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        priority: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        visibility_timeout: float | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        retry: Retry | None = None,
        result_ttl: float | None = None,
        limit: Limit | None = None,
        concurrency: int | None = None,
        cron: str | None = None,
        tz: str | dt.tzinfo | None = None,
        every: float | dt.timedelta | None = None,
        catch_up: CatchUp | None = None,
        grace: float | dt.timedelta | None = None,
        partition_by: str | None = None,
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        priority: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        visibility_timeout: float | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        retry: Retry | None = None,
        result_ttl: float | None = None,
        limit: Limit | None = None,
        concurrency: int | None = None,
        cron: str | None = None,
        tz: str | dt.tzinfo | None = None,
        every: float | dt.timedelta | None = None,
        catch_up: CatchUp | None = None,
        grace: float | dt.timedelta | None = None,
        partition_by: str | None = None,
    ) -> Any:
        """Register a handler: ``@app.task`` or ``@app.task(priority="high", ...)``.

        Options are checked here, at decoration time: an unknown priority is an
        UnknownPriorityError (a ValueError), a bad retry count or timeout a ConfigError.

        Args:
            max_retries: attempts after the first (default: the App's, 3).
            timeout: seconds before the handler is cancelled (default: the App's
                ``task_timeout_s``, one hour).
            visibility_timeout: seconds a crashed worker's job waits before another
                worker takes it (default: the App's, 300). Running jobs heartbeat,
                so this bounds crash detection, not job length.
            backoff_base, backoff_cap: retry delays are uniform in
                ``[0, min(cap, base * 2**(attempt-1))]`` seconds (full jitter).
            retry_on: exception types that are retried; others fail at once.
            retry: a schedule instead of the backoff, ``Retry(intervals=[10, 30, 60])``:
                the n-th retry waits ``intervals[n-1]`` seconds, the last repeating;
                ``max_retries`` defaults to the number of intervals.
            result_ttl: seconds a finished job's hash (result or error) is kept
                (default: the App's ``result_ttl``).
            limit: a rate and/or concurrency limit shared by every worker, optionally
                per value of one handler argument (``streamq.Limit``).
            concurrency: jobs of this task running at once across all workers.
            cron, tz, every, catch_up, grace: also run the task on a schedule
                (see ``App.cron`` and ``App.periodic``).
            partition_by: on a partitioned queue, the argument whose value picks each
                job's partition: jobs with equal values keep their order.
        """
        intervals = schedule_of(retry)
        if max_retries is None:
            max_retries = self.settings.max_retries if intervals is None else len(intervals)
        options = TaskOptions(
            priority=priority or self.default_priority,
            max_retries=max_retries,
            timeout_s=timeout,
            visibility_timeout_s=visibility_timeout,
            backoff_base_s=backoff_base,
            backoff_cap_s=backoff_cap,
            retry_on=retry_on,
            retry_intervals_s=intervals or (),
            result_ttl_s=result_ttl,
            limit=limit,
            concurrency=concurrency,
            partition_by=partition_by,
        ).validate(self.settings.priorities)
        schedule = make_schedule(cron=cron, tz=tz, every=every, catch_up=catch_up, grace=grace)

        def register(handler: Callable[..., Any]) -> Task[Any, Any, Any]:
            if not callable(handler):
                raise ConfigError(f"@task needs a function, got {handler!r}")
            task_name = name or f"{handler.__module__}.{handler.__qualname__}"
            if task_name in self.tasks:
                raise ConfigError(f"task {task_name!r} is already registered on {self!r}")
            LimitPolicy.of(task_name, handler, limit, concurrency)  # ConfigError now, not later
            arguments = inspect.signature(handler).parameters
            if partition_by is not None and partition_by not in arguments:
                raise ConfigError(f"partition_by={partition_by!r}: no such argument of {task_name}")
            if schedule is not None:
                check_handler(task_name, handler)
            registered: Task[Any, Any, Any] = Task(self, handler, task_name, options)
            self.tasks[task_name] = registered
            if schedule is not None:
                self.schedules[task_name] = schedule
            return registered

        return register if fn is None else register(fn)

    def cron(
        self,
        expression: str,
        /,
        *,
        tz: str | dt.tzinfo | None = None,
        catch_up: CatchUp | None = None,
        grace: float | dt.timedelta | None = None,
        **options: Unpack[TaskKeywords],
    ) -> TaskDecorator:
        """Register a task that also runs on a cron schedule: ``@app.cron("*/5 * * * *")``.

        The janitor enqueues each tick once, whatever the number of workers
        (see ``streamq.cron``). The handler takes no arguments (or only ones with
        defaults); ``options`` are ``App.task``'s.

        Args:
            expression: five fields (minute to day of week), or six with seconds first.
            tz: an IANA name (``"Europe/Paris"``) or a tzinfo; UTC by default.
                Ticks follow its wall clock across DST changes.
            catch_up: a tick more than ``grace`` late (no janitor ran) is
                dropped with ``"skip"`` (the default), or run once with ``"once"``;
                missed ticks never run as a burst.
            grace: seconds (or a timedelta) a tick may be late and still run;
                default 60.

        Raises:
            ConfigError: a bad expression or timezone, or a handler that needs arguments.
        """
        return self.task(cron=expression, tz=tz, catch_up=catch_up, grace=grace, **options)

    def periodic(
        self,
        *,
        every: float | dt.timedelta,
        catch_up: CatchUp | None = None,
        grace: float | dt.timedelta | None = None,
        **options: Unpack[TaskKeywords],
    ) -> TaskDecorator:
        """Register a task that also runs every ``every`` (seconds or a timedelta).

        Ticks fall on the multiples of ``every`` since the Unix epoch (UTC), so
        every process agrees on them; ``catch_up`` and ``grace`` as for ``App.cron``.
        """
        return self.task(every=every, catch_up=catch_up, grace=grace, **options)

    # -- connection ------------------------------------------------------------------

    async def redis(self) -> Redis:
        """The App's client, connecting (and starting the embedded server) on first use."""
        if self._redis is None:
            async with self._connect_lock:
                if self._redis is None:
                    url = self.settings.redis_url
                    revive = None
                    if url is None:
                        self._embedded = embedded.Embedded(embedded.data_dir())
                        url = await anyio.to_thread.run_sync(self._embedded.ensure)
                        revive = reviver(embedded.Embedded(self._embedded.directory))
                    if cluster.uses_cluster(self.settings, url):
                        self._redis = await self._connect_cluster(url)
                    elif sentinel.is_sentinel_url(url):  # the master the sentinels name
                        await sentinel.check_sentinels(url, self.settings)
                        self._redis = sentinel.make_sentinel_client(url, self.settings)
                    else:
                        await check_server(url, self.settings)
                        self._redis = make_client(url, self.settings, revive)
        return self._redis

    async def _connect_cluster(self, url: str) -> Redis:
        """redis-py's cluster client, typed as the ``Redis`` it stands in for.

        It serves every keyed command, script and pipeline streamq issues (all
        under the queue's hash tag); what needs one node goes to ``node_redis``.
        """
        await cluster.check_cluster(url, self.settings)
        client = cluster.make_cluster_client(url, self.settings)
        await client.initialize()
        for node in client.get_primaries():
            await check_server(cluster.node_url(url, node.host, node.port), self.settings)
        self._nodes = cluster.NodeClients(url, self.settings)
        return cast(Redis, client)

    @property
    def is_cluster(self) -> bool:
        """Whether this App talks to a Redis Cluster (``streamq.cluster``)."""
        return cluster.uses_cluster(self.settings)

    async def node_redis(self) -> Redis:
        """A plain client on the server holding this queue's keys: the App's client
        on one server; in a cluster, the master owning the queue's slot now.

        For what a cluster router cannot do: blocking reads on a held connection
        (``connection.dedicated``), SCAN over the queue's keys, MULTI blocks.
        """
        return await self.node_redis_for(self.keys.events)

    async def node_redis_for(self, key: str) -> Redis:
        """``node_redis`` for the slot of ``key`` (a partition's, ``streamq.partitions``)."""
        redis = await self.redis()
        if self._nodes is None:
            return redis
        return self._nodes.for_key(cast(RedisCluster, redis), key)

    def partition(self, index: int) -> App:
        """Partition ``index`` of this queue (``streamq.partitions``): an App view with
        its own keys sharing this App's connection and tasks; 0 is this App."""
        from streamq.partitions import partition_of

        return partition_of(self, index)

    @property
    def embedded_server(self) -> embedded.Embedded | None:
        """The embedded server this App connected to (no URL configured), once connected.

        Its ``started`` says whether this App started it or found it running.
        """
        return self._embedded

    async def scripts(self) -> Scripts:
        if (held := durable.held(self)) is not None:  # a durable enqueue's own connection
            return held
        if self._scripts is None:
            self._scripts = Scripts(await self.redis())
        return self._scripts

    async def close(self) -> None:
        """Close connections. The embedded server keeps running for other processes."""
        await self.result_waiters.aclose()
        if self._partition_state is not None:
            for view in list(self._partition_state.views.values()):
                if view is not self:
                    await view.close()
        client, self._redis, self._scripts = self._redis, None, None
        nodes, self._nodes = self._nodes, None
        if nodes is not None:
            await nodes.aclose()
            await cast(RedisCluster, client).aclose()
        elif client is not None and sentinel.is_sentinel_url(self.settings.redis_url):
            await sentinel.close_client(client)
        elif client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    async def __aenter__(self) -> App:
        await self.redis()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()

    # -- jobs -----------------------------------------------------------------------

    def job(self, job_id: str) -> Job[Any]:
        """A handle for a job enqueued earlier, e.g. by another process.

        On a partitioned queue the handle finds the job's partition on first use.
        """
        if self.partitions == 1 and self._partition_state is None:
            return Job(self, job_id)
        from streamq.partitions import job_handle

        return job_handle(self, job_id)

    async def enqueue(self, task_name: str, /, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue by task name, for producers that do not import the handler.

        The name must be registered on this App so its options and signature
        are known; raises ConfigError otherwise.
        """
        task = self.tasks.get(task_name)
        if task is None:
            raise ConfigError(f"no task {task_name!r} registered on {self!r}")
        (job,) = await self.enqueue_calls(task, [(args, kwargs)], job_id=task.options.job_id)
        return job

    async def enqueue_calls(
        self,
        task: Task[Any, Any, Any],
        calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
        *,
        job_id: str | None = None,
        due_ms: int = 0,
        delay_ms: int = 0,
        routed: bool = False,
    ) -> list[Job[Any]]:
        """Encode every call first (so a bad one writes nothing), then send them all.

        ``due_ms`` (epoch ms) later than the server's now, or a positive ``delay_ms``
        (added to the server's clock by the script), puts the jobs in the delayed set.
        On a partitioned queue each call goes to its partition (``streamq.partitions``)
        unless ``routed``: the calls are for this App's own partition.
        A durable enqueue (``Settings.durable``) runs on one connection and waits
        for the replicas after its last write (``streamq.durable``).
        """
        if self.partitions > 1 and self.root is self and not routed:
            from streamq.partitions import enqueue_routed

            # Each partition's share then goes through the lines below (durable included).
            return await enqueue_routed(
                self, task, calls, job_id=job_id, due_ms=due_ms, delay_ms=delay_ms
            )
        if durable.wanted(self, task) and durable.held(self) is None:
            return await durable.enqueue(
                self,
                lambda: self.enqueue_calls(
                    task, calls, job_id=job_id, due_ms=due_ms, delay_ms=delay_ms, routed=routed
                ),
            )
        if task.name.startswith("__main__.") and task.name not in _WARNED_MAIN:
            _WARNED_MAIN.add(task.name)
            warnings.warn(
                f"task {task.name!r} was registered from a module run as a script: a worker "
                "that imports the module registers it under another name and cannot run it; "
                "give it an explicit name (@app.task(name=...))",
                UserWarning,
                stacklevel=3,
            )
        now_ms = int(time.time() * 1000)
        ids: list[str] = []
        prepared: list[tuple[str, str, bytes]] = []
        hooks = self._enqueue_hooks
        fixed = encode_headers(dict(task.options.headers)) if task.options.headers else None
        headers: list[str | None] = []  # per job, with hooks (else every job has ``fixed``)
        for args, kwargs in calls:
            payload = self._encode(task, args, kwargs)
            if hooks is not None:
                headers.append(await hooks.headers(task, args, kwargs, dict(task.options.headers)))
            jid = job_id or new_job_id()
            ids.append(jid)
            prepared.append((jid, self.keys.job(jid), payload))
        if not prepared:
            return []
        priority = task.options.priority
        extra = self._option_fields(task)
        unique = task.options.unique
        if unique is not None and unique.mode == "debounce" and not due_ms:
            delay_ms = max(delay_ms, unique.window_ms)

        def call(
            start: int, end: int, encoded: str | None, held: UniqueArgs | None = None
        ) -> tuple[list[str], list[Arg]]:
            return Scripts.enqueue_call(
                stream=self.keys.stream(priority),
                events=self.keys.events,
                delayed=self.keys.delayed,
                group=GROUP,
                task=task.name,
                content_type=self.serializer.content_type,
                now_ms=now_ms,
                priority=priority,
                due_ms=due_ms,
                delay_ms=delay_ms,
                extra=extra if encoded is None else [*extra, HEADERS_FIELD, encoded],
                jobs=prepared[start:end],
                max_pending=self.settings.max_pending or 0,
                # Only the backpressure check reads every stream.
                all_streams=self.streams if self.settings.max_pending else (),
                unique=held,
                signer=self.signer,
            )  # fmt: skip

        runs = _runs(len(prepared), fixed, headers)
        scripts = await self.scripts()
        if task.options.after:
            if unique is not None or due_ms or delay_ms:
                raise ConfigError("a job with parents (after=...) cannot be unique or delayed")
            jobs_extra = [
                (job, extra if encoded is None else [*extra, HEADERS_FIELD, encoded])
                for start, end, encoded in runs
                for job in prepared[start:end]
            ]
            async with wrong_types_named(self, (key for _, key, _ in prepared)):
                await chains.enqueue_after(
                    self, task.name, priority, task.options.after, jobs_extra
                )
            return [Job(self, jid, task.name) for jid in ids]
        if unique is not None:
            ((start, end, encoded),) = runs
            async with wrong_types_named(self, [prepared[0][1], self.keys.unique(unique.key)]):
                first = UniqueArgs(
                    unique.mode, unique.window_ms, self.keys.unique(unique.key), prepared[0][1]
                )
                held = await enqueue_unique(
                    self, scripts, unique, prepared[0][1], call(0, 1, encoded, first)
                )
            if held is not None:
                return [Job(self, held, task.name)]
            return [Job(self, ids[0], task.name)]
        batches = [call(start, end, encoded) for start, end, encoded in runs]
        async with wrong_types_named(self, (key for _, key, _ in prepared)):
            if len(batches) == 1:
                replies = await scripts.enqueue(batches[0])
            else:
                replies = await scripts.enqueue_many(batches)
        jobs: list[Job[Any]] = [Job(self, jid, task.name) for jid in ids]
        refused = [i for i, (code, _) in enumerate(replies) if code == QUEUE_FULL]
        if refused:
            accepted = [job for i, job in enumerate(jobs) if i not in set(refused)]
            depth = int(replies[refused[0]][1])
            raise QueueFull(self.name, depth, self.settings.max_pending or 0, accepted)
        return jobs

    def _option_fields(self, task: Task[Any, Any, Any]) -> list[Arg]:
        """Entry fields for options a ``with_options`` copy changed from the registered task."""
        registered = self.tasks.get(task.name)
        base = registered.options if registered is not None else None
        fields: list[Arg] = []
        if base is None or task.options.max_retries != base.max_retries:
            fields += ["max_retries", task.options.max_retries]
        if task.options.timeout_s is not None and (
            base is None or task.options.timeout_s != base.timeout_s
        ):
            fields += ["timeout", repr(float(task.options.timeout_s))]
        fields += override_fields(task.options, base)
        self._check_caps(fields)
        return fields

    @property
    def signer(self) -> Signer | None:
        """Signs the entries this App writes (``Settings.signing_key_id``); None: unsigned."""
        return signer_for(self.settings.signing_keys, self.settings.signing_key_id)

    def _check_caps(self, fields: Sequence[Arg]) -> None:
        """ConfigError when a per-job option written into the entry is over its cap
        (``streamq.caps``): a worker would dead-letter the job instead of running it."""
        if len(fields) < 2:
            return
        values = {str(k): v for k, v in zip(fields[::2], fields[1::2], strict=True)}
        timeout = values.get("timeout")
        retries = values.get("max_retries")
        intervals = values.get(RETRY_INTERVALS_FIELD)
        ttl = values.get(RESULT_TTL_FIELD)
        over = JobCaps.from_settings(self.settings).violation(
            None if timeout is None else float(timeout),
            None if retries is None else int(retries),
            None if intervals is None else parse_intervals(as_bytes(intervals)),
            None if ttl is None else float(ttl),
        )
        if over is not None:
            raise ConfigError(f"{over} (Settings.max_job_*): workers would refuse the job")

    def _encode(
        self, task: Task[Any, Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> bytes:
        task.check_arguments(args, kwargs)
        try:
            payload = self.serializer.dumps({"args": list(args), "kwargs": dict(kwargs)})
        except (TypeError, ValueError) as exc:
            bound = task.signature.bind(*args, **kwargs)
            raise SerializationError(task.name, self._culprit(bound.arguments), str(exc)) from exc
        if len(payload) > self.settings.max_payload_bytes:
            raise PayloadTooLarge(task.name, len(payload), self.settings.max_payload_bytes)
        return payload

    def _culprit(self, arguments: Mapping[str, Any]) -> str:
        """Name the first parameter whose value the serializer rejects."""
        for name, value in arguments.items():
            try:
                self.serializer.dumps(value)
            except (TypeError, ValueError):
                return repr(name)
        return "(unknown)"


def _runs(
    n: int, fixed: str | None, headers: Sequence[str | None]
) -> list[tuple[int, int, str | None]]:
    """(start, end, headers) of the batches of n jobs, at most ENQUEUE_BATCH each: all
    with the ``fixed`` headers, or, given each job's ``headers``, consecutive jobs with
    the same (one script call's entry fields are the same for all its jobs)."""
    if not headers:
        return [(i, min(i + ENQUEUE_BATCH, n), fixed) for i in range(0, n, ENQUEUE_BATCH)]
    runs: list[tuple[int, int, str | None]] = []
    start = 0
    for i in range(1, len(headers) + 1):
        if i == len(headers) or i - start == ENQUEUE_BATCH or headers[i] != headers[start]:
            runs.append((start, i, headers[start]))
            start = i
    return runs
