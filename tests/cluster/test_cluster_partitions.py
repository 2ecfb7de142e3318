"""A partitioned queue on a 3-master cluster: its partitions land on several masters,
one worker drains them all, and jobs of one key keep their order."""

from __future__ import annotations

from typing import cast

import pytest
from redis.asyncio.cluster import RedisCluster

from streamq import App
from streamq.settings import Settings
from tests.conftest import drop_queue, queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio
PARTITIONS = 6


async def test_partitions_spread_over_masters_and_keep_per_key_order(cluster_url: str) -> None:
    settings = Settings(
        redis_url=cluster_url,
        partitions=PARTITIONS,
        janitor_interval_s=0.05,
        visibility_timeout_s=60.0,
    )
    async with App(queue_name(), settings=settings) as app:
        seen: dict[str, list[int]] = {}

        @app.task(name="t.event", partition_by="account")
        async def event(account: str, n: int) -> None:
            seen.setdefault(account, []).append(n)

        router = cast(RedisCluster, await app.redis())
        owners = {
            router.get_node_from_key(app.partition(i).keys.events).name  # type: ignore[union-attr]
            for i in range(PARTITIONS)
        }
        assert len(owners) > 1, "the partitions must land on more than one master"
        accounts = [f"acct-{a}" for a in range(8)]
        jobs = await event.enqueue_many([(a, n) for n in range(10) for a in accounts])
        assert len({job.partition for job in jobs}) > 2
        async with running_worker(app, concurrency=1):
            await wait_until(
                lambda: sum(map(len, seen.values())) == len(jobs), description="all drained"
            )
            assert await app.job(jobs[-1].id).result(timeout=5) is None
            # Now idle: each job wakes one partition's blocking read, which cancels
            # the others'; nothing they were delivered may be stranded (the
            # visibility timeout, 60 s, is far beyond this wait).
            for n in range(10, 16):
                await event.enqueue_many([(a, n) for a in accounts])  # several partitions at once
                ran = len(accounts) * (n + 1)
                await wait_until(lambda ran=ran: sum(map(len, seen.values())) == ran)
            await wait_until(
                lambda: sum(map(len, seen.values())) == len(accounts) * 16,
                description="jobs enqueued while the worker idled all ran",
            )
        assert seen == {a: list(range(16)) for a in accounts}
        for i in range(PARTITIONS):
            await drop_queue(app.partition(i))


async def test_doctor_says_which_master_holds_each_partition(cluster_url: str) -> None:
    """On the cluster, doctor lists each partition's master (several here: ok) and
    checks the groups and key types of every partition."""
    from streamq.doctor import Status, run_checks

    settings = Settings(redis_url=cluster_url, partitions=PARTITIONS)
    async with App(queue_name(), settings=settings) as app:

        @app.task(name="t.plain")
        async def plain(n: int) -> int:
            return n

        await plain.enqueue_many([(n,) for n in range(PARTITIONS)])
        checks = {c.name: c for c in await run_checks(app)}
        placement = checks["partition placement"]
        assert placement.status is Status.OK, placement
        assert placement.detail.startswith(("2 of 3 masters", "3 of 3 masters")), placement
        for name in ("partitions", "partition groups", "partition keys"):
            assert checks[name].status is Status.OK, checks[name]
        for index in range(PARTITIONS):
            await drop_queue(app.partition(index))
