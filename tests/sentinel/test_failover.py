"""A Sentinel failover mid-run: the master is killed (SIGKILL) while producers enqueue
and workers run; the sentinels promote the replica and the App follows it.

Two queues run side by side on the deployment: one plain, one ``durable=True``.
Reported (printed): acknowledged enqueues the new master does not have (lost),
jobs run more than once (duplicated), and the time from the kill to the first
acknowledged enqueue after it (recovery), for each queue.

The figures go to stderr (``-s``) as a ``CHAOS {...}`` line, and to
``$STREAMQ_CHAOS_RESULTS`` when set, as the chaos suite's do. Asserted, as
docs/reliability.md promises:
- the client follows the failover: enqueues succeed again, on the new master;
- every acknowledged job the new master has runs (none stuck);
- a durable enqueue that returned (a replica confirmed it) is never lost;
  plain enqueues may be (asynchronous replication), and runs may repeat.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamq import App, NotDurable, Settings
from tests.chaos.support import emit_figures
from tests.conftest import drop_queue, queue_name, running_worker, wait_until
from tests.sentinel.server import SentinelDeployment

pytestmark = pytest.mark.anyio

BEFORE_S = 1.0
"""Producing before the kill."""
AFTER_S = 0.5
"""Producing after the durable queue recovered (the old master back as a replica)."""


@dataclass
class Run:
    """One queue's producer and what its workers ran."""

    app: App
    acked: list[int] = field(default_factory=list)
    """Enqueues that returned (for the durable queue: confirmed by a replica)."""
    unconfirmed: list[int] = field(default_factory=list)
    """Durable enqueues that raised NotDurable: enqueued, not confirmed."""
    failed: int = 0
    """Enqueues that raised a connection error after the client's retries."""
    ran: Counter[int] = field(default_factory=Counter)
    first_after_kill: float | None = None

    async def produce(self, killed: list[float], stop: anyio.Event) -> None:
        task = self.app.tasks["record"]
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                await task.with_options(job_id=f"j{n}").enqueue(n)
            except NotDurable:
                self.unconfirmed.append(n)
                continue
            except (RedisConnectionError, RedisTimeoutError):
                self.failed += 1
                continue
            self.acked.append(n)
            if killed and started > killed[0] and self.first_after_kill is None:
                self.first_after_kill = time.monotonic() - killed[0]
            await anyio.sleep(0.002)


def make_run(url: str, durable: bool) -> Run:
    settings = Settings(
        redis_url=url, durable=durable, durable_timeout_s=0.5,
        janitor_interval_s=0.2, visibility_timeout_s=2.0,
    )  # fmt: skip
    run = Run(App(queue_name(), settings=settings))

    @run.app.task(name="record")
    async def record(n: int) -> None:
        run.ran[n] += 1

    return run


async def test_a_failover_mid_run_loses_no_durable_enqueue_and_the_app_follows_it(
    own_sentinels: SentinelDeployment, request: pytest.FixtureRequest
) -> None:
    deployment = own_sentinels
    old_port, new_port = deployment.master.port, deployment.replicas[0].port
    plain, durable = make_run(deployment.url, False), make_run(deployment.url, True)
    killed: list[float] = []
    stop = anyio.Event()
    async with plain.app, durable.app:
        async with (
            running_worker(plain.app, concurrency=20),
            running_worker(durable.app, concurrency=20),
            anyio.create_task_group() as producers,
        ):
            producers.start_soon(plain.produce, killed, stop)
            producers.start_soon(durable.produce, killed, stop)
            await anyio.sleep(BEFORE_S)
            deployment.master.kill()
            killed.append(time.monotonic())
            await wait_until(lambda: deployment.agree_on(new_port), 10, "the sentinels to promote")
            promoted_s = time.monotonic() - killed[0]
            # The crashed master comes back as a replica of the new one (as an
            # orchestrator restarts it; the sentinels would also convert it, within
            # their 10 s INFO period): durable enqueues can be confirmed again.
            deployment.master.extra_args = [
                *deployment.master.extra_args,
                "--replicaof",
                "127.0.0.1",
                str(new_port),
            ]
            await anyio.to_thread.run_sync(deployment.master.start)
            await wait_until(
                lambda: durable.first_after_kill is not None and plain.first_after_kill is not None,
                15, "both producers to recover",
            )  # fmt: skip
            await anyio.sleep(AFTER_S)
            stop.set()
            await wait_until(lambda: _all_present_ran_or_lost(plain, durable), 10, "the drain")

            report: dict[str, Any] = {}
            for name, run in (("plain", plain), ("durable", durable)):
                present = await _present(run)
                lost = [n for n in run.acked if n not in present]
                stuck = [n for n in present if run.ran[n] == 0]
                report[name] = {
                    "acked": len(run.acked),
                    "unconfirmed (NotDurable)": len(run.unconfirmed),
                    "failed": run.failed,
                    "lost": len(lost),
                    "duplicated": sum(1 for count in run.ran.values() if count > 1),
                    "recovery_s": round(run.first_after_kill or -1, 2),
                }
                assert not stuck, f"{name}: acknowledged jobs the new master has never ran"
                if name == "durable":
                    assert not lost, f"durable enqueues lost in the failover: {lost}"
            report["promoted_s"] = round(promoted_s, 2)
            emit_figures(request.node, "S1 sentinel failover", report)

        # The App now talks to the new master.
        info = await (await plain.app.node_redis()).info("server")
        assert int(info["tcp_port"]) == new_port != old_port
        await drop_queue(plain.app)
        await drop_queue(durable.app)


async def _present(run: Run) -> set[int]:
    """The acknowledged jobs whose hash the (new) master has."""
    redis = await run.app.node_redis()
    jobs = run.acked + run.unconfirmed  # once: the producer may still be appending
    async with redis.pipeline(transaction=False) as pipe:
        for n in jobs:
            pipe.exists(run.app.keys.job(f"j{n}"))
        found = await pipe.execute()
    return {n for n, there in zip(jobs, found, strict=True) if there}


async def _all_present_ran_or_lost(*runs: Run) -> bool:
    for run in runs:
        present = await _present(run)
        if any(run.ran[n] == 0 for n in present):
            return False
    return True
