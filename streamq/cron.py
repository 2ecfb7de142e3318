"""Cron and periodic schedules: when a task's ticks fall, and enqueueing each one once.

A schedule belongs to a task (``@app.cron``, ``@app.periodic``, or
``@app.task(cron=..., every=...)``): a cron expression in a timezone (next
times from ``cronsim``, DST included), or a period whose ticks are the
multiples of ``every`` since the epoch, so every process agrees on them.

The janitor enqueues due ticks (``run_due``, one call per pass, under its
lease), judged by the Redis server's clock. Each tick's job has the id
``cron:<name>:<tick epoch ms>``: the enqueue script adds nothing for an id
that exists, so two janitors overlapping in a lease handover cannot enqueue a
tick twice. The hash ``keys.cron`` remembers, per schedule, the last tick
handled (``through_ms``) and the last job run; ``scripts/cron_mark.lua``
only moves it forward. A pass reads it with one HGETALL.

Enqueue first, record second: a janitor that dies between the two leaves the
tick due, and the next pass enqueues the same id again, which adds nothing.
(The id protects only while the job's hash lives, ``result_ttl_s`` after it
finished; a record older than that would need a janitor paused that long in
the middle of a pass.)

Missed ticks never come as a burst: a pass enqueues at most the latest due
tick of each schedule. A tick more than ``grace`` late (no janitor ran, e.g.
every worker was down) is missed: ``catch_up="skip"`` (the default) drops it,
``catch_up="once"`` still runs it, once, however many ticks were missed. A new
schedule starts with the next tick: it never runs ticks from before it existed.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from streamq.errors import ConfigError, QueueFull
from streamq.ids import tick_job_id
from streamq.logging import get_logger

if TYPE_CHECKING:
    from streamq.app import App
    from streamq.limits import Limit
    from streamq.retry import Retry

CatchUp = Literal["skip", "once"]
CRON_HEADER = "streamq-cron"
"""The header every tick's job carries: the schedule's name (``current_job().headers``)."""
DEFAULT_GRACE_S = 60.0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


class TaskKeywords(TypedDict, total=False):
    """``App.task``'s keyword options, which ``App.cron`` and ``App.periodic`` pass on."""

    name: str | None
    priority: str | None
    max_retries: int | None
    timeout: float | None
    visibility_timeout: float | None
    backoff_base: float
    backoff_cap: float
    retry_on: tuple[type[BaseException], ...]
    retry: Retry | None
    result_ttl: float | None
    limit: Limit | None
    concurrency: int | None


@dataclass(frozen=True, slots=True)
class Schedule:
    """When one task runs: ``cron`` in ``tz``, or ``every_ms`` since the epoch."""

    cron: str | None
    every_ms: int | None
    tz: dt.tzinfo
    catch_up: CatchUp
    grace_ms: int

    @property
    def tz_name(self) -> str:
        return str(getattr(self.tz, "key", None) or self.tz.tzname(None) or self.tz)

    def describe(self) -> str:
        """The cron expression, or ``every 30s``."""
        if self.cron is not None:
            return self.cron
        assert self.every_ms is not None
        seconds = self.every_ms / 1000
        return f"every {seconds:g}s"

    def next_after(self, ms: int) -> int | None:
        """The first tick strictly after ``ms`` (epoch ms); None if there is none."""
        if self.every_ms is not None:
            return (ms // self.every_ms + 1) * self.every_ms
        assert self.cron is not None
        try:  # cronsim steps from the whole second, so ticks are > ms
            return _to_ms(next(CronSim(self.cron, _to_datetime(ms, self.tz))))
        except StopIteration:  # no match within cronsim's 50-year horizon
            return None

    def latest_at_or_before(self, ms: int) -> int | None:
        """The last tick at or before ``ms``; None if there is none."""
        if self.every_ms is not None:
            return ms - ms % self.every_ms
        assert self.cron is not None
        # In reverse, cronsim yields ticks strictly before a whole second, and
        # at or before the whole second of a time with a fraction: both mean
        # ticks at or before ``ms`` once one millisecond is added.
        start = _to_datetime(ms + 1, self.tz)
        try:
            return _to_ms(next(CronSim(self.cron, start, reverse=True)))
        except StopIteration:
            return None

    def due_tick(self, through_ms: int, now_ms: int) -> tuple[int, bool] | None:
        """The latest tick in ``(through_ms, now_ms]``, and whether earlier ones
        in that range were passed over; None when no tick is due."""
        first = self.next_after(through_ms)
        if first is None or first > now_ms:
            return None
        second = self.next_after(first)
        if second is None or second > now_ms:
            return first, False
        # Several passed: find the latest without walking every missed one.
        latest = self.latest_at_or_before(now_ms)
        return max(second, latest if latest is not None else second), True


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What the cron hash remembers of one schedule."""

    through_ms: int
    """Every tick at or before this was handled (run, skipped, or before the schedule began)."""
    run_ms: int | None = None
    """The last tick whose job was enqueued."""
    job_id: str | None = None

    def encode(self) -> str:
        state = {"through_ms": self.through_ms, "run_ms": self.run_ms, "job": self.job_id}
        return json.dumps(state)

    @classmethod
    def decode(cls, raw: bytes | str | None) -> ScheduleState | None:
        """None for no record or one that cannot be read (the schedule starts afresh)."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            through = int(data["through_ms"])
        except (ValueError, TypeError, KeyError):
            return None
        run_ms = data.get("run_ms")
        job = data.get("job")
        return cls(
            through,
            int(run_ms) if isinstance(run_ms, int | float) else None,
            job if isinstance(job, str) and job else None,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What a pass does for one schedule: record ``through_ms``, and run that tick or not."""

    through_ms: int
    run: bool
    late: bool = False
    """The tick is more than ``grace`` late."""
    passed_over: bool = False
    """Earlier due ticks were not run (at most one tick runs per pass)."""
    first: bool = False
    """No record yet: the schedule starts now, with nothing to run."""


def decide(schedule: Schedule, state: ScheduleState | None, now_ms: int) -> Decision | None:
    """A pure function of the schedule, its record and the server's now: None if nothing is due."""
    if state is None:
        return Decision(now_ms, run=False, first=True)
    due = schedule.due_tick(state.through_ms, now_ms)
    if due is None:
        return None
    tick, passed_over = due
    late = now_ms - tick > schedule.grace_ms
    run = not late or schedule.catch_up == "once"
    return Decision(tick, run=run, late=late, passed_over=passed_over)


def job_id_for(name: str, tick_ms: int) -> str:
    """The one job id a tick may have: enqueueing it twice adds nothing."""
    return tick_job_id(name, tick_ms)


# -- declaring ----------------------------------------------------------------------


def make_schedule(
    *,
    cron: str | None = None,
    tz: str | dt.tzinfo | None = None,
    every: float | dt.timedelta | None = None,
    catch_up: CatchUp | None = None,
    grace: float | dt.timedelta | None = None,
) -> Schedule | None:
    """Check a task's schedule options at decoration time; None without a schedule.

    Raises:
        ConfigError: a bad cron expression or one that never fires, an unknown
            timezone, a period that is not positive, both ``cron`` and
            ``every``, or schedule options without a schedule.
    """
    if cron is None and every is None:
        options = (("tz", tz), ("catch_up", catch_up), ("grace", grace))
        given = [name for name, value in options if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} need a schedule: cron=... or every=...")
        return None
    if cron is not None and every is not None:
        raise ConfigError("a task has one schedule: give cron=... or every=..., not both")
    if catch_up is None:
        catch_up = "skip"
    if catch_up not in ("skip", "once"):
        raise ConfigError(f"catch_up must be 'skip' or 'once', got {catch_up!r}")
    grace_ms = DEFAULT_GRACE_S * 1000 if grace is None else _seconds("grace", grace) * 1000
    if every is not None:
        if tz is not None:
            raise ConfigError("tz applies to cron expressions; periodic ticks follow the epoch")
        every_ms = round(_seconds("every", every) * 1000)
        if every_ms < 1:
            raise ConfigError(f"every must be a positive duration (>= 1 ms), got {every!r}")
        return Schedule(None, every_ms, dt.UTC, catch_up, int(grace_ms))
    zone = _zone(tz)
    expression = _check_cron(cron, zone)
    return Schedule(expression, None, zone, catch_up, int(grace_ms))


def check_handler(task_name: str, handler: Callable[..., Any]) -> None:
    """ConfigError unless the handler can run with no arguments (a tick passes none)."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return  # a callable without a signature: Task reports what it can
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    required = [
        name
        for name, p in signature.parameters.items()
        if p.default is inspect.Parameter.empty and p.kind not in variadic
    ]
    if required:
        raise ConfigError(
            f"scheduled task {task_name!r} must run without arguments, "
            f"but {', '.join(required)} has no default"
        )


def _seconds(option: str, value: object) -> float:
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"{option} must be seconds or a timedelta, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0 or (option == "every" and seconds == 0):
        raise ConfigError(f"{option} must be a positive duration, got {value!r}")
    return seconds


def _zone(tz: str | dt.tzinfo | None) -> dt.tzinfo:
    if tz is None:
        return dt.UTC
    if isinstance(tz, dt.tzinfo):
        return tz
    if not isinstance(tz, str) or not tz:
        raise ConfigError(f"tz must be a timezone name like 'Europe/Paris', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown timezone {tz!r}: {exc}") from None


def _check_cron(expression: object, zone: dt.tzinfo) -> str:
    if not isinstance(expression, str):
        raise ConfigError(f"cron must be a string like '*/5 * * * *', got {expression!r}")
    try:
        next(CronSim(expression, dt.datetime.now(zone)))
    except CronSimError as exc:
        raise ConfigError(f"bad cron expression {expression!r}: {exc}") from None
    except StopIteration:
        raise ConfigError(f"cron expression {expression!r} never fires") from None
    return expression


def _to_datetime(ms: int, tz: dt.tzinfo) -> dt.datetime:
    return (_EPOCH + ms * _MS).astimezone(tz)


def _to_ms(when: dt.datetime) -> int:
    return (when - _EPOCH) // _MS


def format_ms(ms: int | None, tz: dt.tzinfo) -> str | None:
    """ISO 8601 in the schedule's timezone (milliseconds only when there are any)."""
    if ms is None:
        return None
    return _to_datetime(ms, tz).isoformat(timespec="milliseconds" if ms % 1000 else "seconds")


# -- the janitor's duty ----------------------------------------------------------------


async def server_now_ms(app: App) -> int:
    seconds, micros = await (await app.node_redis()).time()
    return int(seconds) * 1000 + int(micros) // 1000


async def read_states(app: App) -> dict[str, ScheduleState]:
    """Every schedule's record in the cron hash (one HGETALL)."""
    raw = cast(Mapping[bytes, bytes], await (await app.redis()).hgetall(app.keys.cron))
    states = {}
    for name, value in raw.items():
        state = ScheduleState.decode(value)
        if state is not None:
            states[name.decode(errors="replace")] = state
    return states


async def run_due(app: App, log: Any = None) -> list[str]:
    """Enqueue every due tick of the App's schedules; returns the job ids enqueued.

    The janitor calls this once per pass, holding its lease. Costs nothing
    without schedules, and a TIME and an HGETALL when none is due.
    """
    if not app.schedules:
        return []
    log = log or get_logger(queue=app.name, role="janitor")
    now_ms = await server_now_ms(app)
    states = await read_states(app)
    scripts = await app.scripts()
    enqueued: list[str] = []
    for name, schedule in app.schedules.items():
        state = states.get(name)
        decision = decide(schedule, state, now_ms)
        if decision is None:
            continue
        run_ms, job_id = (state.run_ms, state.job_id) if state is not None else (None, None)
        tick = decision.through_ms
        context = {"schedule": name, "task": name, "tick_ms": tick}
        if decision.run:
            job_id = job_id_for(name, tick)
            task = app.tasks[name].with_options(job_id=job_id, headers={CRON_HEADER: name})
            try:
                await app.enqueue_calls(task, [((), {})], job_id=job_id)
            except QueueFull as exc:
                # Left due: the next pass tries again, until the tick is late.
                log.warning("scheduled job refused: queue full", **context, error=str(exc))
                continue
            run_ms = tick
            enqueued.append(job_id)
            log.info(
                "scheduled job enqueued" if not decision.late else "missed tick run once",
                job_id=job_id, **context, late_ms=now_ms - tick,
            )  # fmt: skip
        elif decision.first:
            log.info("schedule started; its first tick is the next one", **context)
        else:
            log.warning("missed tick skipped", **context, late_ms=now_ms - tick)
        if decision.passed_over:
            log.warning("earlier missed ticks not run (at most one per pass)", **context)
        await scripts.cron_mark(
            app.keys.cron, name, tick, ScheduleState(tick, run_ms, job_id).encode()
        )
    return enqueued


# -- reading, for operators (``streamq cron list``) -----------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """One schedule as ``streamq cron list`` shows it; times in epoch ms."""

    name: str
    task: str
    schedule: Schedule
    next_run_ms: int | None
    """The next tick that will run; in the past when it is due and no janitor has run it yet."""
    last_run_ms: int | None
    last_job_id: str | None
    last_job_status: str | None
    """The last job's status; None if none ran or its hash expired (``result_ttl_s``)."""

    def to_dict(self) -> dict[str, Any]:
        s = self.schedule
        return {
            "name": self.name, "task": self.task, "cron": s.cron,
            "every_s": None if s.every_ms is None else s.every_ms / 1000,
            "tz": s.tz_name, "catch_up": s.catch_up, "grace_s": s.grace_ms / 1000,
            "next_run_ms": self.next_run_ms, "next_run": format_ms(self.next_run_ms, s.tz),
            "last_run_ms": self.last_run_ms, "last_run": format_ms(self.last_run_ms, s.tz),
            "last_job_id": self.last_job_id, "last_job_status": self.last_job_status,
        }  # fmt: skip


async def list_schedules(app: App) -> list[ScheduleInfo]:
    """Every schedule of the App with its next and last run, by name."""
    if not app.schedules:
        return []
    now_ms = await server_now_ms(app)
    states = await read_states(app)
    redis = await app.redis()
    infos = []
    for name, schedule in sorted(app.schedules.items()):
        state = states.get(name)
        decision = decide(schedule, state, now_ms)
        next_run: int | None
        if decision is not None and decision.run:
            next_run = decision.through_ms
        else:
            through = now_ms if state is None else max(now_ms, state.through_ms)
            next_run = schedule.next_after(through)
        status = None
        if state is not None and state.job_id is not None:
            raw = await redis.hget(await _job_key(app, state.job_id), "status")
            status = raw.decode() if isinstance(raw, bytes) else raw
        infos.append(
            ScheduleInfo(
                name,
                name,
                schedule,
                next_run,
                None if state is None else state.run_ms,
                None if state is None else state.job_id,
                status,
            )  # fmt: skip
        )
    return infos


async def _job_key(app: App, job_id: str) -> str:
    """The hash of a tick's job: in the partition its id routed it to (``streamq.partitions``)."""
    from streamq.partitions import locate

    index = (await locate(app, [job_id]))[job_id]
    return app.partition(index or 0).keys.job(job_id)
