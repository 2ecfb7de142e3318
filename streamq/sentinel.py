"""Redis Sentinel: a URL naming the sentinels, and a client that follows the master.

``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]``
(``rediss+sentinel://`` for TLS) names the sentinels that watch a master
(``service_name``, the name of their ``sentinel monitor`` line). The user and
password are the data nodes' (master and replicas); the sentinels' own, if
they want one, go in the query as ``sentinel_username`` and
``sentinel_password``. Other query options (``ssl_*``) are the data nodes'
too, and apply to the sentinels as well on ``rediss+sentinel://``.

The App's client is redis-py's ``Sentinel.master_for``: each new connection
asks the sentinels where the master is, and a connection to a master that
was demoted (READONLY) or went away is dropped and made again, so the client
follows a failover within its retries. Its pool blocks past
``max_connections`` and its connections pack with hiredis, as
``connection.make_client``'s do; ``connection.dedicated`` works on it
unchanged.

Before the pool is made, ``check_sentinels`` asks each sentinel for the
master (saying which sentinels were tried and what each said when none
knows it), then runs ``connection.check_server`` on that master, so the
version, the credentials and the database are checked as for a plain URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, unquote, urlencode

import redis
import redis.sentinel
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamq.errors import ConfigError, ServerUnavailable
from streamq.settings import Settings, check_redis_url, mask_url

if TYPE_CHECKING:
    from streamq.connection import ServerVersion

SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
"""Sentinel URL schemes and the plain scheme each data node is reached by."""
DEFAULT_PORT = 26379
SENTINEL_AUTH = ("sentinel_username", "sentinel_password")
_SERVICE_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def is_sentinel_url(url: str | None) -> bool:
    return url is not None and url.partition("://")[0].lower() in SCHEMES


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    scheme: str
    """The data nodes' plain scheme: ``redis`` or ``rediss``."""
    userinfo: str
    """``user:password@`` as written (still quoted), or empty."""
    query: Mapping[str, str]
    """The data nodes' options (``ssl_*``...), without the sentinels' credentials."""
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def hosts(self) -> str:
        """``h1:p1,h2:p2``, for messages."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)

    def node_url(self, host: str, port: int | str) -> str:
        """The plain URL of one data node (the master found, a replica): credentials,
        database and options of this URL."""
        host = f"[{host}]" if ":" in host else host
        query = f"?{urlencode(dict(self.query))}" if self.query else ""
        return f"{self.scheme}://{self.userinfo}{host}:{port}/{self.db}{query}"


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse and check a sentinel URL; ConfigError says which rule it broke."""
    shown = mask_url(url) if isinstance(url, str) else repr(url)

    def bad(rule: str) -> ConfigError:
        return ConfigError(
            f"redis_url {rule}, got {shown} (a sentinel URL is "
            "redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db])"
        )

    scheme, sep, rest = url.partition("://")
    if scheme.lower() not in SCHEMES or not sep:
        raise bad("must start with redis+sentinel:// or rediss+sentinel://")
    rest, _, fragment = rest.partition("#")
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not hostlist:
        raise bad("names no sentinel")
    sentinels = tuple(_host_port(item, bad) for item in hostlist.split(","))
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts:
        raise bad("names no service (the master's name in the sentinels' `sentinel monitor`)")
    if len(parts) > 2:
        raise bad("has more path than /service_name/db")
    service = parts[0]
    if not _SERVICE_RE.match(service):
        raise bad(f"has a service name that is not [A-Za-z0-9_.-]+: {service!r}")
    query = {k: v[-1] for k, v in parse_qs(query_text, keep_blank_values=True).items()}
    db_text = parts[1] if len(parts) == 2 else query.pop("db", "0")
    if not db_text.isdigit():
        raise bad(f"database must be an integer >= 0 (/service/0), not {db_text!r}")
    extra = {k: query.pop(k) for k in SENTINEL_AUTH if k in query}
    parsed = SentinelURL(
        sentinels=sentinels,
        service=service,
        db=int(db_text),
        scheme=SCHEMES[scheme.lower()],
        userinfo=f"{userinfo}{at}",
        query=query,
        sentinel_username=extra.get("sentinel_username"),
        sentinel_password=extra.get("sentinel_password"),
    )
    host, port = sentinels[0]
    try:  # the data nodes' URL: credentials, TLS options and files, redis-py's own parse
        check_redis_url(parsed.node_url(host, port))
    except ConfigError as exc:
        reason = str(exc).removeprefix("redis_url ").rpartition(", got ")[0]
        raise bad(reason or str(exc)) from None
    return parsed


def _host_port(item: str, bad: Any) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [::1]:26379
        host, _, tail = item[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise bad(f"has an empty sentinel address in {item!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad(f"sentinel port must be 1..65535, not {port_text!r}")
    return host, int(port_text)


# -- clients ---------------------------------------------------------------------------


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's sentinel pool that waits past ``max_connections`` instead of raising."""


class _AsksFirst:
    """Reconnect to the master the sentinels name now, not to the last address.

    redis-py 8 reconnects a dropped connection (``send_packed_command``) through
    ``connect_check_health``, which skips ``SentinelManagedConnection.connect``
    and so the sentinels (redis/redis-py#3874): a held connection (the worker's
    fetch loop, ``connection.dedicated``) went back to the old master's address
    after a failover, and read its stale data once it was restarted there.
    """

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        this: Any = self
        if not this.is_connected and this.connection_pool.is_master:
            this.host, this.port = await this.connection_pool.get_master_address()
        await super().connect_check_health(  # type: ignore[misc]
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class FollowingConnection(_AsksFirst, SentinelManagedConnection):
    pass


class FollowingSSLConnection(_AsksFirst, SentinelManagedSSLConnection):
    pass


def _node_kwargs(parsed: SentinelURL) -> dict[str, Any]:
    """The data nodes' connection options (user, password, db, TLS), as redis-py parses them."""
    host, port = parsed.sentinels[0]
    kwargs = dict(parse_url(parsed.node_url(host, port)))
    for name in ("host", "port", "connection_class", "path"):
        kwargs.pop(name, None)
    return kwargs


def _sentinel_kwargs(parsed: SentinelURL, settings: Settings, retries: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.connect_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "retry": Retry(NoBackoff(), retries),
    }
    if parsed.sentinel_username:
        kwargs["username"] = unquote(parsed.sentinel_username)
    if parsed.sentinel_password:
        kwargs["password"] = unquote(parsed.sentinel_password)
    if parsed.tls:
        kwargs["ssl"] = True
        kwargs.update({k: v for k, v in _node_kwargs(parsed).items() if k.startswith("ssl_")})
    return kwargs


def make_sentinel_client(url: str, settings: Settings) -> Redis:
    """A pooled client on the master the sentinels name, following failovers.

    Retried as ``make_client``'s are (a connection error or timeout, 8 times
    with backoff); each retry's new connection asks the sentinels again.
    """
    from streamq.connection import POOL_WAIT_S, fast_class  # connection imports settings only

    parsed = parse_sentinel_url(url)
    manager = Sentinel(  # type: ignore[no-untyped-call]
        parsed.sentinels, sentinel_kwargs=_sentinel_kwargs(parsed, settings, retries=1)
    )
    backoff = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
    base = FollowingSSLConnection if parsed.tls else FollowingConnection
    client = manager.master_for(
        parsed.service,
        connection_pool_class=BlockingSentinelPool,
        connection_class=fast_class(base),
        max_connections=settings.max_connections,
        timeout=POOL_WAIT_S,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        retry=Retry(backoff, retries=8, supported_errors=(RedisConnectionError, RedisTimeoutError)),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        client_name="streamq",
        **_node_kwargs(parsed),
    )
    return cast(Redis, client)


async def close_client(client: Redis) -> None:
    """Close a ``make_sentinel_client`` client: its pool, then its sentinel connections."""
    pool = client.connection_pool
    await client.aclose()
    await pool.disconnect()
    if isinstance(pool, SentinelConnectionPool):
        await cast(Sentinel, pool.sentinel_manager).aclose()


def sync_client(url: str) -> redis.Redis:
    """A synchronous client on the current master (test helpers, scripts)."""
    parsed = parse_sentinel_url(url)
    sentinel_kwargs = _sentinel_kwargs(parsed, Settings(), retries=1)
    sentinel_kwargs.pop("retry")
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        parsed.sentinels, sentinel_kwargs=sentinel_kwargs
    )
    node = _node_kwargs(parsed)
    if parsed.tls:
        node["connection_class"] = redis.sentinel.SentinelManagedSSLConnection
    client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
        parsed.service, **node
    )
    return client


# -- the connect-time check --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Master:
    """The master the sentinels agree on, and what each sentinel said."""

    host: str
    port: int
    node_url: str
    """Its plain URL (credentials and options of the sentinel URL)."""
    answers: Mapping[str, Mapping[str, Any] | str]
    """Per sentinel (``host:port``): its ``SENTINEL MASTER`` state, or why it could not say."""


async def find_master(url: str, settings: Settings) -> Master:
    """Ask every sentinel about the service; the master of the first that knows it
    and sees it up. ServerUnavailable lists each sentinel tried and its answer."""
    parsed = parse_sentinel_url(url)
    answers: dict[str, Mapping[str, Any] | str] = {}
    found: tuple[str, int] | None = None
    kwargs = _sentinel_kwargs(parsed, settings, retries=0)
    for host, port in parsed.sentinels:
        name = f"{host}:{port}"
        client = Redis(host=host, port=port, **kwargs)
        try:
            state: Mapping[str, Any] = cast(
                "Mapping[str, Any]", await client.sentinel_master(parsed.service)
            )
        except ResponseError as exc:
            answers[name] = str(exc)
            continue
        except RedisConnectionError as exc:
            answers[name] = _why(exc)
            continue
        except (RedisTimeoutError, TimeoutError):
            answers[name] = f"no answer within {settings.connect_timeout_s:g} s"
            continue
        except RedisError as exc:
            answers[name] = str(exc)
            continue
        finally:
            await client.aclose()
        answers[name] = state
        up = state.get("is_master") and not state.get("is_odown") and not state.get("is_sdown")
        if found is None and up:
            found = (str(state["ip"]), int(state["port"]))
    if found is None:
        said = "; ".join(f"{name}: {_said(answer)}" for name, answer in answers.items())
        raise ServerUnavailable(
            f"no sentinel of {mask_url(url)} names a reachable master for service "
            f"{parsed.service!r}; tried {len(answers)} sentinel"
            f"{'' if len(answers) == 1 else 's'}: {said}"
        )
    host, port = found
    return Master(host, port, parsed.node_url(host, port), answers)


def _why(exc: RedisConnectionError) -> str:
    from streamq.connection import explain_connection_error

    return explain_connection_error(exc)


def _said(answer: Mapping[str, Any] | str) -> str:
    if isinstance(answer, str):
        return answer
    flags = answer.get("flags", "")
    return f"master {answer.get('ip')}:{answer.get('port')} is {flags}"


async def check_sentinels(url: str, settings: Settings) -> ServerVersion | None:
    """``check_server`` for a sentinel URL: find the master, then check it."""
    from streamq.connection import check_server

    master = await find_master(url, settings)
    return await check_server(master.node_url, settings)


async def node_url_now(url: str, settings: Settings) -> str:
    """A plain URL of the current master (for code that needs one server's URL)."""
    return (await find_master(url, settings)).node_url


# -- what doctor reads -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topology:
    """The deployment as the sentinels see it (``streamq doctor``)."""

    service: str
    master: str
    """``host:port``."""
    replicas: Sequence[Mapping[str, Any]]
    """``SENTINEL REPLICAS`` entries: ip, port, flags, master-link-status, ..."""
    sentinels_listed: int
    sentinels_reachable: int
    quorum: int
    known_sentinels: int
    """The sentinels the answering sentinel knows, itself included."""


async def topology(url: str, settings: Settings) -> Topology:
    parsed = parse_sentinel_url(url)
    master = await find_master(url, settings)
    states = [a for a in master.answers.values() if not isinstance(a, str)]
    state = states[0]
    host, port = parsed.sentinels[0]
    for name, answer in master.answers.items():
        if not isinstance(answer, str):
            host, _, port_text = name.rpartition(":")
            port = int(port_text)
            break
    client = Redis(host=host, port=port, **_sentinel_kwargs(parsed, settings, retries=0))
    try:
        replicas = await client.sentinel_slaves(parsed.service)
    finally:
        await client.aclose()
    return Topology(
        service=parsed.service,
        master=f"{master.host}:{master.port}",
        replicas=list(replicas),
        sentinels_listed=len(parsed.sentinels),
        sentinels_reachable=len(states),
        quorum=int(state.get("quorum", 0)),
        known_sentinels=int(state.get("num-other-sentinels", 0)) + 1,
    )


def replica_addresses(replicas: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{r.get('ip')}:{r.get('port')}" for r in replicas]
