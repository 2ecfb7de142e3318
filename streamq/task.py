"""Task: a registered handler, callable as before, with a typed ``enqueue``.

``Task[P, R, Ret]``: ``P`` is the handler's parameters, ``R`` the job's result
type (the awaited value for an async handler) and ``Ret`` what calling the
handler directly returns (a coroutine for an async handler).
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from streamq.envelope import encode_headers
from streamq.errors import ConfigError
from streamq.retry import Retry, check_intervals
from streamq.unique import Unique, unique_option

if TYPE_CHECKING:
    from streamq.app import App
    from streamq.job import Job
    from streamq.limits import Limit

P = ParamSpec("P")
R = TypeVar("R")
Ret = TypeVar("Ret")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task behaviour; ``with_options`` overrides it for one call site."""

    priority: str = "default"
    max_retries: int = 3
    """Attempts after the first that a failing handler gets."""
    timeout_s: float | None = None
    """The handler is cancelled after this many seconds (None: the App's task_timeout_s)."""
    visibility_timeout_s: float | None = None
    """None: the App's. Bounds how long a crashed worker's job waits to be reclaimed."""
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    """Exception types that are retried; any other fails the job at once."""
    job_id: str | None = None
    """A caller-chosen id makes enqueue idempotent: the same id adds nothing twice."""
    headers: tuple[tuple[str, str], ...] = ()
    """String headers every job of this call site carries (``with_options(headers=...)``)."""
    unique: Unique | None = None
    """One live job per key (``with_options(key=..., debounce=..., throttle=...)``)."""
    after: tuple[str, ...] = ()
    """Parent job ids: the job runs once all of them succeeded (``streamq.chains``)."""
    retry_intervals_s: tuple[float, ...] = ()
    """A retry schedule (``retry=Retry(intervals=...)``): the n-th retry waits the n-th
    interval, the last one repeating. Empty: the exponential backoff."""
    result_ttl_s: float | None = None
    """How long a finished job's hash (result or error) is kept; None: the App's."""
    limit: Limit | None = None
    """Rate and concurrency limits across all workers (``streamq.limits``)."""
    concurrency: int | None = None
    """Jobs of this task running at once across all workers (None: no cap)."""
    partition_key: str | None = None
    """On a partitioned queue, the jobs of one key share a partition, so they run in
    enqueue order per priority (``with_options(partition_key=...)``)."""
    partition_by: str | None = None
    """The handler argument whose value is each job's partition key
    (``@app.task(partition_by=...)``)."""
    durable: bool | None = None
    """Wait for replicas after enqueue (``streamq.durable``); None: the App's ``durable``."""

    def validate(self, priorities: Sequence[str]) -> TaskOptions:
        from streamq.errors import UnknownPriorityError

        if self.priority not in priorities:
            raise UnknownPriorityError(self.priority, tuple(priorities))
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.timeout_s is not None and (
            not isinstance(self.timeout_s, int | float)
            or not math.isfinite(self.timeout_s)
            or self.timeout_s <= 0
        ):
            raise ConfigError(
                f"timeout must be a positive number of seconds, got {self.timeout_s!r}"
            )
        for name in ("visibility_timeout_s", "backoff_base_s", "backoff_cap_s"):
            value = getattr(self, name)
            if value is None and name == "visibility_timeout_s":
                continue
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.visibility_timeout_s is not None and self.visibility_timeout_s <= 0:
            raise ConfigError("visibility_timeout must be positive")
        if not isinstance(self.retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on
        ):
            raise ConfigError(f"retry_on must be a tuple of exception types, got {self.retry_on!r}")
        if self.job_id is not None and (not isinstance(self.job_id, str) or not self.job_id):
            raise ConfigError(f"job_id must be a non-empty string, got {self.job_id!r}")
        if self.headers:
            try:
                encode_headers(dict(self.headers))
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc)) from None
        for name in ("partition_key", "partition_by"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        if self.retry_intervals_s:
            check_intervals(self.retry_intervals_s)
        if self.result_ttl_s is not None and (
            not isinstance(self.result_ttl_s, int | float)
            or isinstance(self.result_ttl_s, bool)
            or not 0.001 <= self.result_ttl_s < float("inf")
        ):
            raise ConfigError(
                f"result_ttl must be a finite number of seconds >= 0.001, got {self.result_ttl_s!r}"
            )
        return self


def _parent_ids(after: Sequence[Job[Any] | str]) -> tuple[str, ...]:
    from streamq.job import Job

    if isinstance(after, str | bytes) or not isinstance(after, Sequence):
        raise ConfigError("after must be a list of jobs (Job handles or job ids)")
    ids = []
    for parent in after:
        job_id = parent.id if isinstance(parent, Job) else parent
        if not isinstance(job_id, str) or not job_id:
            raise ConfigError(f"after takes Job handles or non-empty job ids, got {parent!r}")
        ids.append(job_id)
    if not ids:
        raise ConfigError("after needs at least one parent job")
    if len(ids) > 100:
        raise ConfigError(f"after takes at most 100 parent jobs, got {len(ids)}")
    return tuple(dict.fromkeys(ids))


def schedule_of(retry: object) -> tuple[float, ...] | None:
    """The intervals of a ``retry=`` option (None when not given), or ConfigError."""
    if retry is None:
        return None
    if not isinstance(retry, Retry):
        raise ConfigError(f"retry must be a Retry(intervals=[...]), got {type(retry).__name__}")
    if retry.intervals is None:
        raise ConfigError(
            "retry=Retry(...) needs intervals, e.g. Retry(intervals=[10, 30, 60]); "
            "Retry(delay=...) is for raising from a handler"
        )
    return retry.intervals


class Task(Generic[P, R, Ret]):
    """A handler registered on an App under ``name``."""

    def __init__(self, app: App, fn: Callable[P, Ret], name: str, options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        kinds = [p.kind for p in self.signature.parameters.values()]
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._max_positional: int | None = (
            None
            if inspect.Parameter.VAR_POSITIONAL in kinds
            else sum(k in positional for k in kinds)
        )
        self._keywords: frozenset[str] | None = (
            None
            if inspect.Parameter.VAR_KEYWORD in kinds
            else frozenset(
                name
                for name, p in self.signature.parameters.items()
                if p.kind is not inspect.Parameter.POSITIONAL_ONLY
            )
        )
        self._fitting_shapes: set[tuple[int, tuple[str, ...]]] = set()
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"Task({self.name!r}, priority={self.options.priority!r})"

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """TypeError unless the arguments fit the handler's signature.

        Whether arguments bind depends only on how many are positional and which
        names are passed, so each such shape is checked once (bulk enqueues repeat
        one shape; ``Signature.bind`` costs more than encoding a small payload).
        """
        shape = (len(args), tuple(kwargs))
        if shape in self._fitting_shapes:
            return
        try:
            self._check_shape(len(args), kwargs)
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.name!r}: {exc}") from None
        if len(self._fitting_shapes) < 1000:
            self._fitting_shapes.add(shape)

    def _check_shape(self, positional: int, kwargs: Mapping[str, Any]) -> None:
        """What Python would say first about a call: ``Signature.bind`` reports a
        missing argument before an unexpected keyword or one too many."""
        limit = self._max_positional
        if limit is not None and positional > limit:
            noun = "argument" if limit == 1 else "arguments"
            verb = "was" if positional == 1 else "were"
            raise TypeError(f"takes {limit} positional {noun} but {positional} {verb} given")
        if self._keywords is not None:
            for name in kwargs:
                if name not in self._keywords:
                    raise TypeError(f"got an unexpected keyword argument {name!r}")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Ret:
        """Call the handler directly, as if it were not decorated."""
        return self.fn(*args, **kwargs)

    def with_options(
        self,
        *,
        priority: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
        key_ttl: float | None = None,
        debounce: float | None = None,
        throttle: float | None = None,
        after: Sequence[Job[Any] | str] | None = None,
        retry: Retry | None = None,
        result_ttl: float | None = None,
        partition_key: str | None = None,
        durable: bool | None = None,
    ) -> Task[P, R, Ret]:
        """A copy of this task with some options changed, for one call site.

        A changed ``max_retries``, ``timeout``, ``retry`` schedule or ``result_ttl``
        travels in the job's stream entry, so whichever worker runs the job
        applies it; so do ``headers`` (string names to string values, at most 8 KiB
        as JSON; they replace earlier ones): the handler reads them from
        ``current_job().headers``, middleware from its context, and
        ``streamq replay`` shows them in the job's message. A ``retry`` schedule
        without ``max_retries`` sets it to the number of intervals.

        ``key`` makes the job unique (``streamq.unique``): while a job of that
        key lives, enqueue returns its handle instead of adding another; the
        key is free once that job is final, or ``key_ttl`` seconds after.
        ``throttle=s``: the first enqueue wins for ``s`` seconds. ``debounce=s``:
        the job waits ``s`` seconds, and an enqueue within the wait replaces its
        arguments and restarts the wait.

        ``after=[job, ...]`` (handles or ids of this queue's jobs) adds the job
        as ``deferred``: it runs once every parent succeeded, and goes to the DLQ
        naming the parent if one fails for good (``streamq.chains``).

        ``partition_key``: on a partitioned queue (``streamq.partitions``), jobs
        with the same key go to the same partition, so they keep their order.
        ``durable=True`` (or False) overrides ``Settings.durable`` for this call
        site: wait for replicas after each enqueue (``streamq.durable``).
        """
        if headers is not None and not isinstance(headers, Mapping):
            raise ConfigError(
                f"headers must be a mapping of str to str, got {type(headers).__name__}"
            )
        intervals = schedule_of(retry)
        if intervals is not None and max_retries is None:
            max_retries = len(intervals)
        changes: dict[str, Any] = {
            "priority": priority,
            "max_retries": max_retries,
            "timeout_s": timeout,
            "job_id": job_id,
            "headers": None if headers is None else tuple(headers.items()),
            "unique": unique_option(key, key_ttl, debounce, throttle),
            "after": None if after is None else _parent_ids(after),
            "retry_intervals_s": intervals,
            "result_ttl_s": result_ttl,
            "partition_key": partition_key,
            "durable": durable,
        }
        options = replace(self.options, **{k: v for k, v in changes.items() if v is not None})
        return Task(self.app, self.fn, self.name, options.validate(self.app.settings.priorities))

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Add one job; returns its handle once Redis accepted it (XADD replied).

        Raises:
            SerializationError: an argument cannot be encoded (a TypeError); nothing written.
            TypeError: the arguments do not fit the handler's signature.
            EnqueueError: the encoded arguments exceed ``max_payload_bytes``.
        """
        (job,) = await self.app.enqueue_calls(self, [(args, kwargs)], job_id=self.options.job_id)
        return job

    async def enqueue_many(
        self, calls: Iterable[tuple[Any, ...] | Mapping[str, Any]]
    ) -> list[Job[R]]:
        """Add many jobs in one pipelined round trip.

        Each item is a tuple of positional arguments or a mapping of keyword
        arguments. Every item is checked and encoded before anything is sent.
        """
        normalized: list[tuple[Sequence[Any], Mapping[str, Any]]] = []
        for call in calls:
            if isinstance(call, Mapping):
                normalized.append(((), call))
            elif isinstance(call, tuple):
                normalized.append((call, {}))
            else:
                raise TypeError(
                    f"enqueue_many({self.name!r}) takes tuples of positional arguments "
                    f"or mappings of keyword arguments, got {type(call).__name__}"
                )
        if self.options.job_id is not None and len(normalized) > 1:
            raise ConfigError("a fixed job_id cannot be used for more than one job")
        if self.options.unique is not None and len(normalized) > 1:
            raise ConfigError("a unique key cannot be used for more than one job per call")
        return await self.app.enqueue_calls(self, normalized, job_id=self.options.job_id)

    async def enqueue_in(
        self, delay: dt.timedelta | float, /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]:
        """Add one job that becomes runnable after ``delay`` (a timedelta or seconds).

        It waits in the delayed set; the janitor moves it to its priority stream
        once due, at most one janitor interval late. The delay counts from the
        Redis server's clock (the script adds it to ``TIME``), so a producer
        whose clock is off does not shift it.
        """
        seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
        if not math.isfinite(seconds):
            raise ConfigError(f"delay must be finite, got {delay!r}")
        (job,) = await self.app.enqueue_calls(
            self, [(args, kwargs)], job_id=self.options.job_id,
            delay_ms=max(0, int(seconds * 1000)),
        )  # fmt: skip
        return job

    async def enqueue_at(self, when: dt.datetime, /, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Add one job that becomes runnable at ``when`` (a timezone-aware datetime).

        Whether ``when`` is still ahead is judged by the Redis server's clock.
        """
        if not isinstance(when, dt.datetime) or when.tzinfo is None:
            raise ConfigError("enqueue_at needs a timezone-aware datetime (e.g. with tzinfo=UTC)")
        (job,) = await self.app.enqueue_calls(
            self, [(args, kwargs)], job_id=self.options.job_id,
            due_ms=int(when.timestamp() * 1000),
        )  # fmt: skip
        return job
