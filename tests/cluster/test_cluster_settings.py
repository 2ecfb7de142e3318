"""Choosing cluster mode: the URL scheme, ``cluster=True``, ``STREAMQ_CLUSTER``; and
what a cluster cannot be (a unix socket, a database other than 0, not ok)."""

from __future__ import annotations

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from streamq import App, ConfigError, Settings
from streamq.cluster import node_url, plain_url, uses_cluster
from streamq.errors import ServerUnavailable
from tests.cluster.server import ValkeyCluster
from tests.conftest import queue_name

pytestmark = pytest.mark.anyio


def test_cluster_mode_from_the_url_the_flag_or_the_environment() -> None:
    assert uses_cluster(Settings(redis_url="redis+cluster://10.0.0.1:7000"))
    assert uses_cluster(Settings(redis_url="rediss+cluster://u:p@10.0.0.1:7000"))
    assert uses_cluster(Settings(redis_url="redis://10.0.0.1:7000", cluster=True))
    env = {"STREAMQ_REDIS_URL": "redis://10.0.0.1:7000", "STREAMQ_CLUSTER": "1"}
    assert uses_cluster(Settings.from_env(env))
    assert not uses_cluster(Settings(redis_url="redis://10.0.0.1:7000"))
    assert plain_url("rediss+cluster://u:p@h:1") == "rediss://u:p@h:1"
    assert node_url("redis+cluster://u:p@seed:1?x=1", "10.0.0.2", 7001) == (
        "redis://u:p@10.0.0.2:7001?x=1"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (lambda: Settings(redis_url="redis+cluster://h:1/2"), "only database 0"),
        (lambda: Settings(redis_url="unix:///tmp/v.sock", cluster=True), "over TCP"),
        (lambda: Settings(cluster=True), "needs a redis_url"),
        (lambda: Settings(redis_url="redis+cluster://h:99999"), "port must be 1..65535"),
    ],
)
def test_what_a_cluster_url_cannot_be(settings: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings()  # type: ignore[operator]


async def test_the_app_uses_the_cluster_client(cluster_url: str) -> None:
    async with App(queue_name(), redis_url=cluster_url) as app:
        assert app.is_cluster and isinstance(await app.redis(), RedisCluster)
        node = await app.node_redis()
        # The plain client is on the master that owns the queue's slot.
        owner = (await app.redis()).get_node_from_key(app.keys.events)  # type: ignore[attr-defined]
        kwargs = node.connection_pool.connection_kwargs
        assert (kwargs["host"], int(kwargs["port"])) == (owner.host, int(owner.port))


async def test_a_cluster_that_is_not_ok_is_refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Two of the three ranges assigned: cluster_state:fail, said at connect."""
    cluster = ValkeyCluster(tmp_path_factory.mktemp("broken"))
    for node in cluster.nodes:
        node.start()
    try:
        with redis.Redis(port=cluster.ports[0]) as client:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 5460)
        with pytest.raises(
            ServerUnavailable, match="not a usable cluster: All slots are not covered"
        ):
            async with App(queue_name(), redis_url=cluster.url):
                pass
    finally:
        cluster.stop()
