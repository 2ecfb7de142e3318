"""Doctor's replication checks: the Sentinel deployment, and what durable enqueues need.

``replication_checks(app, redis)`` reads (the sentinels, then the master's
``INFO replication`` and two CONFIG values) and judges with pure functions:

- ``sentinel`` (a ``redis+sentinel://`` URL): the master and replicas the
  sentinels name, how many sentinels answered, and what would stop a failover
  (no replica to promote, fewer reachable sentinels than the quorum).
- ``durable`` (``Settings.durable``): enough replicas online for
  ``durable_replicas``, whether the master takes WAITAOF (Redis 7.0 does not:
  WAIT only), and ``min-replicas-to-write``, without which a master cut off
  from its replicas keeps accepting the writes a failover then discards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from streamq import sentinel
from streamq.app import App
from streamq.connection import server_version, version_tuple
from streamq.doctor import Check, Readable, Status, _config_value
from streamq.settings import Settings


async def replication_checks(app: App, redis: Redis) -> list[Check]:
    checks: list[Check] = []
    url = app.settings.redis_url
    if sentinel.is_sentinel_url(url):
        assert url is not None
        try:
            seen: sentinel.Topology | Exception = await sentinel.topology(url, app.settings)
        except (RedisError, OSError) as exc:
            seen = exc
        checks.append(check_sentinel(seen))
    if app.settings.durable:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.info("replication")
            pipe.info("server")
            pipe.info("persistence")
            pipe.config_get("min-replicas-to-write")
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        checks.append(
            check_durable(
                app.settings, replies[0], replies[1], replies[2],
                _config_value("min-replicas-to-write", replies[3]),
            )
        )  # fmt: skip
    return checks


def check_sentinel(seen: sentinel.Topology | Exception) -> Check:
    if isinstance(seen, Exception):
        return Check(
            "sentinel", Status.PROBLEM, f"cannot read the Sentinel deployment: {seen}",
            "check the sentinels' addresses and the service name in the URL",
        )  # fmt: skip
    up = [r for r in seen.replicas if not _down(r)]
    down = [r for r in seen.replicas if _down(r)]
    names = ", ".join(f"{a} ({_state(r)})" for a, r in _named(seen.replicas)) or "none"
    detail = (
        f"Sentinel-managed: service {seen.service!r}, master {seen.master}, "
        f"replicas {names}; {seen.sentinels_reachable} of the URL's {seen.sentinels_listed} "
        f"sentinels answered, {seen.known_sentinels} known to them, quorum {seen.quorum}"
    )
    if not up:
        return Check(
            "sentinel", Status.PROBLEM,
            f"{detail}: no replica is up, so losing the master is an outage (nothing "
            "to promote) and loses every job written since its last persisted write",
            "add a replica (replicaof <master>) that the sentinels can see",
        )  # fmt: skip
    if seen.sentinels_reachable < seen.quorum or seen.known_sentinels < seen.quorum:
        return Check(
            "sentinel", Status.PROBLEM,
            f"{detail}: fewer sentinels than the quorum, so none can start a failover",
            "start the missing sentinels, or list every sentinel in the URL",
        )  # fmt: skip
    if down or seen.known_sentinels < 3:
        why = []
        if down:
            why.append(f"{len(down)} replica{'s' if len(down) > 1 else ''} down")
        if seen.known_sentinels < 3:
            why.append("fewer than 3 sentinels: losing one may block a failover")
        return Check(
            "sentinel", Status.WARN, f"{detail}: {'; '.join(why)}",
            "bring the replicas back, and run 3 or more sentinels on separate machines",
        )  # fmt: skip
    return Check("sentinel", Status.OK, detail)


def _named(replicas: Any) -> list[tuple[str, Mapping[str, Any]]]:
    return [(f"{r.get('ip')}:{r.get('port')}", r) for r in replicas]


def _down(replica: Mapping[str, Any]) -> bool:
    return bool(replica.get("is_sdown") or replica.get("is_odown"))


def _state(replica: Mapping[str, Any]) -> str:
    """down, or up (with its link to the master as the sentinel last read it: a
    sentinel refreshes a replica's INFO every 10 s, so a new replica shows ``err``)."""
    if _down(replica):
        return "down"
    link = str(replica.get("master-link-status", "ok"))
    return "up" if link == "ok" else f"up, link {link} at the sentinel's last look"


def check_durable(
    settings: Settings,
    replication: Mapping[str, Any] | Exception,
    server: Mapping[str, Any] | Exception,
    persistence: Mapping[str, Any] | Exception,
    min_replicas: Readable,
) -> Check:
    """What ``durable=True`` needs of the master: replicas online, and how it waits."""
    wanted = settings.durable_replicas
    if isinstance(replication, Exception):
        return Check(
            "durable", Status.WARN, f"cannot read INFO replication: {replication}",
            "grant +info so doctor can check",
        )  # fmt: skip
    online = sum(
        1
        for key, value in replication.items()
        if str(key).startswith("slave") and isinstance(value, Mapping)
        and value.get("state") == "online"
    )  # fmt: skip
    how = _how_it_waits(server, persistence)
    detail = f"durable: {online} replica{'' if online == 1 else 's'} online, {wanted} wanted; {how}"
    if str(replication.get("role", "master")) != "master":
        return Check(
            "durable", Status.PROBLEM, f"{detail}; but this server is a replica",
            "point the App at the master (a redis+sentinel:// URL follows it)",
        )  # fmt: skip
    if online < wanted:
        return Check(
            "durable", Status.PROBLEM,
            f"{detail}: every durable enqueue will raise NotDurable after "
            f"{settings.durable_timeout_s:g} s (the jobs are enqueued, not confirmed)",
            "add replicas, or lower durable_replicas",
        )  # fmt: skip
    if isinstance(min_replicas, Exception) or min_replicas in ("", "0"):
        said = "unreadable" if isinstance(min_replicas, Exception) else "0"
        return Check(
            "durable", Status.WARN,
            f"{detail}; min-replicas-to-write is {said}: a master cut off from its "
            "replicas keeps accepting writes (outcomes, non-durable enqueues) that a "
            "failover then discards",
            "CONFIG SET min-replicas-to-write 1 and min-replicas-max-lag 10 "
            "(then CONFIG REWRITE), on every server that may become master",
        )  # fmt: skip
    return Check("durable", Status.OK, f"{detail}; min-replicas-to-write {min_replicas}")


def _how_it_waits(
    server: Mapping[str, Any] | Exception, persistence: Mapping[str, Any] | Exception
) -> str:
    if isinstance(server, Exception) or isinstance(persistence, Exception):
        return "WAIT (cannot tell whether WAITAOF applies)"
    version = server_version(server)
    if version.product == "Redis" and version_tuple(version.version) < (7, 2):
        return f"WAIT only: {version} has no WAITAOF (Redis 7.2+)"
    if str(persistence.get("aof_enabled", 0)) != "1":
        return "WAIT only: appendonly is off, so no WAITAOF"
    return "WAIT for the replicas, then WAITAOF 1 0 for the master's own fsync"
