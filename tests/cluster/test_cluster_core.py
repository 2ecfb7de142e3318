"""The core path on a real cluster: queues on every master enqueue, run and report."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster

from streamq import App
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio

NAMES = ["emails", "thumbs", "billing", "reports", "webhooks"]


async def test_five_queues_on_three_masters(cluster_url: str) -> None:
    apps = [App(name, redis_url=cluster_url) for name in NAMES]
    owners = set()
    for app in apps:

        @app.task(name="double")
        async def double(x: int) -> int:
            return 2 * x

        await app.redis()
        router = await app.redis()
        assert isinstance(router, RedisCluster)
        node = router.get_node_from_key(app.keys.events)
        assert node is not None
        owners.add(node.name)
    assert len(owners) == 3, "the queue names must cover every master"
    try:
        for app in apps:
            job = await app.tasks["double"].enqueue(21)
            async with running_worker(app):
                assert await job.result(timeout=10) == 42
    finally:
        for app in apps:
            await app.close()
