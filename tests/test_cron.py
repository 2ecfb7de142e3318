"""Cron and periodic schedules: declared on tasks, each tick enqueued exactly once.

The pure half (tick times across DST, the due/missed decision, decoration
errors) needs no Redis. The rest runs janitors against the session server:
two worker processes racing for a per-second schedule, two janitors without a
lease overlapping on the same ticks, and missed ticks after a stop.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

from streamq import App, current_job
from streamq.cron import (
    CRON_HEADER,
    CatchUp,
    Schedule,
    ScheduleState,
    decide,
    job_id_for,
    make_schedule,
    read_states,
    run_due,
    server_now_ms,
)
from streamq.envelope import HEADERS_FIELD
from streamq.errors import ConfigError
from streamq.ids import job_id_time_ms
from streamq.replay import Replay
from tests.apps.cron_app import TICK
from tests.apps.process import streamq_child
from tests.conftest import drop_queue, queue_name, running_worker, subprocess_env, wait_until

PARIS = ZoneInfo("Europe/Paris")


def ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def paris(
    year: int, month: int, day: int, hour: int, minute: int = 0, fold: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=PARIS, fold=fold)


def ticks_after(schedule: Schedule, start: dt.datetime, count: int) -> list[dt.datetime]:
    found, at = [], ms(start)
    for _ in range(count):
        nxt = schedule.next_after(at)
        assert nxt is not None
        found.append(dt.datetime.fromtimestamp(nxt / 1000, PARIS))
        at = nxt
    return found


def cron(expression: str, **options: Any) -> Schedule:
    schedule = make_schedule(
        cron=expression, tz=options.pop("tz", "Europe/Paris"), every=None,
        catch_up=options.pop("catch_up", None), grace=options.pop("grace", None),
    )  # fmt: skip
    assert schedule is not None
    return schedule


def periodic(every: float, **options: Any) -> Schedule:
    schedule = make_schedule(cron=None, tz=None, every=every, **options)
    assert schedule is not None
    return schedule


# -- pure: tick times ------------------------------------------------------------------


def test_a_daily_cron_in_paris_keeps_its_wall_clock_across_both_dst_changes() -> None:
    """``30 2 * * *`` in Europe/Paris: 02:30 local each day, in CET and CEST alike.

    On the spring-forward night 02:30 does not exist: it runs at 03:00 (as
    Debian cron does); on the fall-back night 02:30 happens twice: it runs once.
    A schedule computed in UTC would drift by an hour after each change.
    """
    daily = cron("30 2 * * *")
    spring = ticks_after(daily, paris(2025, 3, 29, 12), 3)
    assert spring == [paris(2025, 3, 30, 3, 0), paris(2025, 3, 31, 2, 30), paris(2025, 4, 1, 2, 30)]
    assert [t.utcoffset() for t in spring] == [dt.timedelta(hours=2)] * 3
    autumn = ticks_after(daily, paris(2025, 10, 25, 12), 3)
    assert autumn == [
        paris(2025, 10, 26, 2, 30),
        paris(2025, 10, 27, 2, 30),
        paris(2025, 10, 28, 2, 30),
    ]
    assert [t.utcoffset() for t in autumn] == [dt.timedelta(hours=h) for h in (2, 1, 1)]
    assert len({ms(t) for t in autumn}) == 3


def test_a_half_hourly_cron_runs_in_both_repeated_hours_of_the_autumn_change() -> None:
    """``*/30 * * * *`` ticks every 30 real minutes through the repeated hour,
    and ``latest_at_or_before`` agrees with ``next_after`` at every step."""
    half = cron("*/30 * * * *")
    ticks = ticks_after(half, paris(2025, 10, 26, 1, 50), 5)
    assert ticks == [
        paris(2025, 10, 26, 2, 0), paris(2025, 10, 26, 2, 30),
        paris(2025, 10, 26, 2, 0, fold=1), paris(2025, 10, 26, 2, 30, fold=1),
        paris(2025, 10, 26, 3, 0),
    ]  # fmt: skip
    steps = [
        b - a for a, b in zip([ms(t) for t in ticks], [ms(t) for t in ticks[1:]], strict=False)
    ]
    assert steps == [30 * 60_000] * 4
    for t in ticks:
        assert half.latest_at_or_before(ms(t)) == ms(t)
        assert half.latest_at_or_before(ms(t) + 1234) == ms(t)
        assert half.next_after(ms(t) - 1) == ms(t)


def test_periodic_ticks_are_multiples_of_every_since_the_epoch() -> None:
    """Every process computes the same ticks, whenever it started."""
    every = periodic(30)
    assert every.next_after(1_000) == 30_000
    assert every.next_after(30_000) == 60_000
    assert every.latest_at_or_before(59_999) == 30_000
    assert periodic(0.25).next_after(1_000) == 1_250


def test_a_tick_job_id_names_its_schedule_and_carries_its_time() -> None:
    """Replay reads a tick job's story from its tick on, not from the start of history."""
    assert job_id_for("reports.nightly", 1_795_981_351_000) == "cron:reports.nightly:1795981351000"
    assert job_id_time_ms("cron:reports.nightly:1795981351000") == 1_795_981_351_000
    assert job_id_time_ms("cron:x:12") is None
    assert job_id_time_ms("cron:x:soon") is None


# -- pure: what a pass does ------------------------------------------------------------


def test_decide_starts_a_new_schedule_without_running_past_ticks() -> None:
    first = decide(periodic(1), None, 10_500)
    assert first is not None and not first.run and first.first and first.through_ms == 10_500
    assert decide(periodic(1), ScheduleState(10_500), 10_900) is None
    due = decide(periodic(1), ScheduleState(10_500), 11_050)
    assert due is not None and due.run and due.through_ms == 11_000 and not due.late


@pytest.mark.parametrize("catch_up", ["skip", "once"])
def test_decide_runs_at_most_the_latest_missed_tick_once(catch_up: str) -> None:
    """Five ticks missed: one decision for the latest; run only with catch_up='once'."""
    schedule = periodic(1, catch_up=catch_up, grace=0.3)
    decision = decide(schedule, ScheduleState(10_000), 15_600)
    assert decision is not None
    assert decision.through_ms == 15_000 and decision.late and decision.passed_over
    assert decision.run is (catch_up == "once")
    on_time = decide(schedule, ScheduleState(10_000), 15_200)
    assert on_time is not None and on_time.run and not on_time.late


# -- decoration ------------------------------------------------------------------------


def test_cron_and_periodic_register_a_task_with_its_options_and_a_schedule() -> None:
    app = App(queue_name(), redis_url="redis://127.0.0.1:1")

    @app.cron("*/5 * * * *", tz="Europe/Paris", name="report", priority="high", max_retries=1)
    async def report() -> None: ...

    @app.periodic(every=dt.timedelta(seconds=30), name="beat", timeout=5, catch_up="once")
    def beat(verbose: bool = False) -> None: ...

    @app.task(name="sweep", cron="0 3 * * *", grace=dt.timedelta(minutes=5))
    async def sweep(*args: Any, **kwargs: Any) -> None: ...

    assert app.tasks["report"].options.priority == "high"
    assert app.tasks["report"].options.max_retries == 1
    assert app.tasks["beat"].options.timeout_s == 5
    assert set(app.schedules) == {"report", "beat", "sweep"}
    assert app.schedules["report"].cron == "*/5 * * * *"
    assert app.schedules["report"].tz_name == "Europe/Paris"
    assert app.schedules["beat"].every_ms == 30_000
    assert app.schedules["beat"].catch_up == "once"
    assert app.schedules["sweep"].grace_ms == 300_000
    assert app.schedules["sweep"].tz_name == "UTC"


BAD: list[tuple[str, Callable[[App], Any], str]] = [
    ("bad cron", lambda a: a.cron("61 * * * *"), "bad cron expression"),
    ("field count", lambda a: a.cron("* * *"), "bad cron expression"),
    ("never fires", lambda a: a.cron("0 0 31 2 *"), "bad cron expression"),
    ("unknown tz", lambda a: a.cron("* * * * *", tz="Mars/Olympus"), "unknown timezone"),
    ("zero every", lambda a: a.periodic(every=0), "positive"),
    ("negative every", lambda a: a.periodic(every=dt.timedelta(seconds=-1)), "positive"),
    ("every not a number", lambda a: a.periodic(every="5s"), "seconds or a timedelta"),
    ("both", lambda a: a.task(cron="* * * * *", every=5), "not both"),
    ("tz for periodic", lambda a: a.task(every=5, tz="UTC"), "tz applies"),
    ("catch_up unknown", lambda a: a.periodic(every=5, catch_up="all"), "catch_up"),
    ("options alone", lambda a: a.task(catch_up="once"), "need a schedule"),
]


@pytest.mark.parametrize(("case", "declare", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_schedules_are_refused_at_decoration(
    case: str, declare: Callable[[App], Any], message: str
) -> None:
    app = App(queue_name(), redis_url="redis://127.0.0.1:1")
    with pytest.raises(ConfigError, match=message):
        declare(app)(lambda: None)
    assert not app.tasks and not app.schedules


def test_a_scheduled_handler_that_needs_arguments_is_refused() -> None:
    """A tick passes no arguments: a handler that needs some would fail every time."""
    app = App(queue_name(), redis_url="redis://127.0.0.1:1")
    with pytest.raises(ConfigError, match="'needs' must run without arguments, but to has"):

        @app.periodic(every=60, name="needs")
        async def needs(to: str, subject: str = "hi") -> None: ...

    assert not app.tasks and not app.schedules


# -- on a server -----------------------------------------------------------------------


async def cron_jobs(app: App, name: str) -> dict[str, int]:
    """Enqueued events per tick job id of schedule ``name``."""
    redis = await app.redis()
    counts: dict[str, int] = {}
    for _, fields in await redis.xrange(app.keys.events):
        job = fields.get(b"job", b"").decode()
        if fields.get(b"kind") == b"enqueued" and job.startswith(f"cron:{name}:"):
            counts[job] = counts.get(job, 0) + 1
    return counts


def tick_of(job_id: str) -> int:
    return int(job_id.rsplit(":", 1)[1])


async def wait_for_phase(app: App, low_ms: int, high_ms: int, *, after_ms: int = 0) -> int:
    """Wait until the server's clock is past ``after_ms`` with now % 1000 in
    [low, high); returns that now."""
    found: list[int] = []

    async def in_phase() -> bool:
        now = await server_now_ms(app)
        found.append(now)
        return now > after_ms and low_ms <= now % 1000 < high_ms

    await wait_until(in_phase, timeout=10, description=f"server clock phase {low_ms}-{high_ms}")
    return found[-1]


def second_of(now_ms: int) -> int:
    return now_ms - now_ms % 1000


@pytest.mark.anyio
async def test_two_worker_processes_enqueue_each_per_second_tick_exactly_once(
    redis_url: str,
) -> None:
    """Two workers (each with its janitor) share an every=1s schedule for 10 ticks.

    Every tick has exactly one job: one enqueued event, one stream entry, the
    id ``cron:<name>:<tick>``, the schedule header. Halfway, the janitor that
    holds the lease stops (SIGTERM) and the other takes over with no tick
    lost or doubled. Without the janitor duty nothing would be enqueued.
    """
    name = queue_name()
    app = App(name, redis_url=redis_url)
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=name)
    args = ["worker", "tests.apps.cron_app:app", "--grace", "5"]
    async with app, streamq_child(args, env) as first, streamq_child(args, env) as second:
        redis = await app.redis()

        def ticks_seen(count: int) -> Callable[[], Awaitable[bool]]:
            async def enough() -> bool:
                return len(await cron_jobs(app, TICK)) >= count

            return enough

        await wait_until(ticks_seen(5), timeout=30, description="5 ticks")
        holder = (await redis.get(app.keys.lock("janitor"))).decode()
        stopped = next(c for c in (first, second) if f":{c.pid}:" in holder)
        stopped.signal(signal.SIGTERM)
        assert await stopped.wait(timeout_s=20) == 0
        await wait_until(ticks_seen(10), timeout=30, description="10 ticks")
        survivor = (await redis.get(app.keys.lock("janitor"))).decode()
        assert f":{stopped.pid}:" not in survivor

        counts = await cron_jobs(app, TICK)
        assert set(counts.values()) == {1}, counts
        ticks = sorted(tick_of(job) for job in counts)
        assert all(t % 1000 == 0 for t in ticks)
        assert ticks == list(range(ticks[0], ticks[-1] + 1000, 1000)), "a tick was lost"
        entries = await redis.xrange(app.keys.stream("default"))
        ids = [fields[b"id"].decode() for _, fields in entries]
        assert len(ids) == len(set(ids)) and set(counts) <= set(ids)
        for _, fields in entries:
            assert json.loads(fields[HEADERS_FIELD.encode()]) == {CRON_HEADER: TICK}
        state = (await read_states(app))[TICK]
        assert state.job_id is not None and state.job_id in counts
        assert state.job_id == job_id_for(TICK, state.through_ms)
        await drop_queue(app)


@pytest.mark.anyio
async def test_janitors_overlapping_without_a_lease_cannot_double_a_tick(
    redis_url: str,
) -> None:
    """Two janitors that both think they lead (a lease handover) run the cron duty
    at once, over and over, for three ticks or so: each tick still has one job.

    Without the per-tick job id, both would enqueue every tick they saw due
    before the other recorded it.
    """
    name = queue_name()
    apps = [App(name, redis_url=redis_url) for _ in range(2)]
    for each in apps:
        each.task(name="beat", every=0.5)(lambda: None)
    async with apps[0], apps[1]:
        await run_due(apps[0])  # starts the schedule
        start = await server_now_ms(apps[0])

        async def hammer(app: App) -> None:
            while await server_now_ms(app) < start + 1600:
                await run_due(app)

        async with anyio.create_task_group() as tg:
            for each in apps:
                tg.start_soon(hammer, each)
        counts = await cron_jobs(apps[0], "beat")
        assert len(counts) in (3, 4) and set(counts.values()) == {1}, counts
        assert await (await apps[0].redis()).xlen(apps[0].keys.stream("default")) == len(counts)

        # A janitor whose read predates the last record cannot move it back.
        scripts = await apps[0].scripts()
        before = (await read_states(apps[0]))["beat"]
        assert not await scripts.cron_mark(
            apps[0].keys.cron, "beat", before.through_ms - 500, ScheduleState(0).encode()
        )
        assert (await read_states(apps[0]))["beat"] == before
        await drop_queue(apps[0])


@pytest.mark.anyio
@pytest.mark.parametrize("catch_up", ["skip", "once"])
async def test_ticks_missed_while_no_janitor_ran(redis_url: str, catch_up: CatchUp) -> None:
    """Stop (no pass runs) for two ticks, start again past the grace:
    'skip' enqueues nothing for them, 'once' exactly one job, for the latest.
    Never a burst; the next tick runs on time in both modes.
    """
    app = App(queue_name(), redis_url=redis_url)
    app.task(name="beat", every=1, grace=0.3, catch_up=catch_up)(lambda: None)
    async with app:
        await run_due(app)  # starts the schedule: no job
        armed = await wait_for_phase(app, 500, 900)
        ran = await wait_for_phase(app, 0, 150, after_ms=armed)
        assert await run_due(app) == [job_id_for("beat", second_of(ran))]
        back = await wait_for_phase(app, 500, 900, after_ms=ran + 2000)
        assert await run_due(app) == (
            [] if catch_up == "skip" else [job_id_for("beat", second_of(back))]
        )
        assert await run_due(app) == []  # recorded: not again
        later = await wait_for_phase(app, 0, 150, after_ms=back)
        assert await run_due(app) == [job_id_for("beat", second_of(later))]
        counts = await cron_jobs(app, "beat")
        assert set(counts.values()) == {1}
        assert len(counts) == (2 if catch_up == "skip" else 3)
        assert (await read_states(app))["beat"].through_ms == second_of(later)
        await drop_queue(app)


@pytest.mark.anyio
async def test_a_tick_job_carries_the_schedule_header_and_runs(app: App) -> None:
    """The job's headers tell the handler and replay which schedule enqueued it;
    its story starts with the normal enqueued event."""
    seen: list[Any] = []

    @app.periodic(every=0.2, name="hello")
    async def hello() -> None:
        seen.append(dict(current_job().headers))

    await run_due(app)
    jobs: list[str] = []

    async def ticked() -> bool:
        jobs.extend(await run_due(app))
        return bool(jobs)

    await wait_until(ticked, timeout=5, description="a tick")
    async with running_worker(app, janitor=False):
        assert await app.job(jobs[0]).result(timeout=10) is None
    assert seen == [{CRON_HEADER: "hello"}]
    story = await Replay(app).story(jobs[0])
    kinds = [record.kind for record in story if record.source == "event"]
    assert kinds[0] == "enqueued" and "succeeded" in kinds
    (message,) = [record for record in story if record.source == "message"]
    assert json.loads(message.fields["headers"]) == {CRON_HEADER: "hello"}
