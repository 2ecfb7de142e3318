"""Redis Cluster: redis-py's cluster client, and a plain client per master for what needs one.

``redis+cluster://host:port`` (or ``rediss+cluster://``, or ``Settings(cluster=True)``
with a ``redis://`` URL) names any node of a cluster as the seed. The App's
client is then redis-py's ``RedisCluster``: every key of a queue shares the
hash tag ``{queue}`` (``streamq.keys``), so each script call, pipeline and
MULTI block lands on one slot, which the cluster client routes (following
MOVED and ASK replies itself).

Some calls need one node rather than a router: a blocking XREADGROUP on a
connection held for a serial loop (``connection.dedicated``), SCAN (per node
in a cluster) and a pool shared with a flat-reply client. For those,
``NodeClients.for_key`` gives a plain pooled ``Redis`` on the master that owns
the key's slot, as the cluster client's slot table says at that moment. A
queue's keys all live on that one master, so its SCAN sees every one of them.
After resharding, that table changes on the cluster client's next MOVED; a
plain client already made for the old master keeps talking to it until then
(and fails with MOVED), which is why ``for_key`` looks the owner up each call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import str_if_bytes

from streamq.errors import ConfigError, ServerUnavailable
from streamq.settings import Settings, mask_url

if TYPE_CHECKING:
    from streamq.app import App

SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""Cluster URL schemes and the plain scheme each node is reached by."""


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SCHEMES


def plain_url(url: str) -> str:
    """``redis+cluster://h:p`` → ``redis://h:p`` (a plain URL stays as it is)."""
    scheme, sep, rest = url.partition("://")
    return f"{SCHEMES.get(scheme.lower(), scheme)}{sep}{rest}"


def uses_cluster(settings: Settings, url: str | None = None) -> bool:
    """Whether ``settings`` (or this URL) ask for cluster mode."""
    url = settings.redis_url if url is None else url
    return bool(settings.cluster) or (url is not None and is_cluster_url(url))


def check_cluster_url(url: str) -> str:
    """Reject what redis-py's cluster client cannot do: unix sockets, a database other than 0."""
    parts = urlsplit(plain_url(url))
    if parts.scheme == "unix":
        raise ConfigError(
            f"a cluster is reached over TCP (redis+cluster://host:port), got {mask_url(url)}"
        )
    path = parts.path.strip("/")
    if path not in ("", "0") or "db=" in parts.query and "db=0" not in parts.query:
        raise ConfigError(f"a cluster has only database 0, got {mask_url(url)}")
    return url


def node_url(url: str, host: str, port: int | str) -> str:
    """``url`` (its credentials and options) pointed at one node."""
    parts = urlsplit(plain_url(url))
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}{at}{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def make_cluster_client(url: str, settings: Settings) -> RedisCluster:
    """redis-py's cluster client from any node's URL, retried as ``make_client`` is."""
    backoff = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
    return RedisCluster.from_url(
        plain_url(url),
        max_connections=settings.max_connections,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        retry=Retry(backoff, retries=8),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        client_name="streamq",
    )


@dataclass(frozen=True, slots=True)
class ClusterState:
    """What ``CLUSTER INFO`` and the slot table say, for ``check`` and ``doctor``."""

    state: str
    """``cluster_state``: ``ok``, or ``fail`` (slots uncovered, a majority unreachable)."""
    known_nodes: int
    slots_ok: int
    masters: int


def parse_cluster_info(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str_if_bytes(k): str(str_if_bytes(v)) for k, v in raw.items()}
    text = str_if_bytes(raw)
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


async def cluster_state(client: RedisCluster) -> ClusterState:
    """The seed node's view of the cluster (every node agrees once it is ok)."""
    node = client.get_default_node()
    info = parse_cluster_info(await client.execute_command("CLUSTER INFO", target_nodes=node))
    return ClusterState(
        state=info.get("cluster_state", "unknown"),
        known_nodes=int(info.get("cluster_known_nodes", 0)),
        slots_ok=int(info.get("cluster_slots_ok", 0)),
        masters=len(client.get_primaries()),
    )


async def check_cluster(url: str, settings: Settings) -> None:
    """Refuse a cluster that is not ok (uncovered slots, a partition), with what it says."""
    client = RedisCluster.from_url(
        plain_url(url),
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.connect_timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(), 0),
    )
    try:
        await client.initialize()
        state = await cluster_state(client)
    except (RedisError, RedisClusterException) as exc:  # the latter: slots not covered
        raise ServerUnavailable(f"{mask_url(url)} is not a usable cluster: {exc}") from None
    finally:
        await client.aclose()
    if state.state != "ok":
        raise ServerUnavailable(
            f"{mask_url(url)}: cluster_state is {state.state} "
            f"({state.slots_ok} of 16384 slots ok); streamq needs cluster_state:ok"
        )


@dataclass(frozen=True, slots=True)
class QueueNode:
    """Where one queue lives in the cluster (``streamq doctor``)."""

    state: ClusterState
    slot: int
    node: str
    """``host:port`` of the master owning the slot."""


async def queue_node(app: App) -> QueueNode:
    router = cast(RedisCluster, await app.redis())
    key = app.keys.events
    node = router.get_node_from_key(key)
    return QueueNode(
        state=await cluster_state(router),
        slot=router.keyslot(key),
        node=node.name if node is not None else "none",
    )


class NodeClients:
    """A plain pooled client per master, made on first need, for the calls a router cannot do."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._url = url
        self._settings = settings
        self._clients: dict[str, Redis] = {}

    def for_key(self, cluster: RedisCluster, key: str) -> Redis:
        """The client of the master that owns ``key``'s slot now."""
        from streamq.connection import make_client  # connection imports settings only

        node = cluster.get_node_from_key(key)
        if node is None:  # pragma: no cover - only asked for a replica
            raise ServerUnavailable(f"no master serves the slot of {key}")
        client = self._clients.get(node.name)
        if client is None:
            client = make_client(node_url(self._url, node.host, node.port), self._settings)
            self._clients[node.name] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
            await client.connection_pool.disconnect()
