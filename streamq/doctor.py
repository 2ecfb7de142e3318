"""Server checks: is this Redis set up so that streamq keeps its guarantees?

``run_checks(app)`` reads the server's version, persistence and eviction
settings, cluster mode, the current user's ACL permissions, the types of
the queue's keys and how far back its history reaches, and turns each into a
``Check``: ok, warn (could not tell, or worth knowing) or problem (jobs can be
lost or workers will fail), with the fix for anything not ok. Managed services
often deny CONFIG or ACL commands: such a check becomes a warning that says
what could not be read, never a crash.

The server reads are two pipelined round trips, and the evaluations pure
functions of what was read (``check_version`` and friends), so each rule is
testable on its own. The key types are a SCAN of the queue's keys with
pipelined TYPEs (``check_key_types``); the history one more pipelined read
(``stats.read_history``), judged by ``check_history``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError

from streamq import sentinel
from streamq.app import App
from streamq.connection import MIN_REDIS, MIN_VALKEY, server_version
from streamq.errors import ServerTooOld, WrongKeyType
from streamq.keys import GROUP, Keyspace
from streamq.keytypes import KEY_TYPES, find_wrong_types
from streamq.settings import Settings
from streamq.stats import History, format_bytes, format_duration, read_history


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    """The check could not be made, or the setting is fine but worth knowing."""
    PROBLEM = "problem"
    """Jobs can be lost or streamq cannot work: ``streamq doctor`` exits 1."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    """What to run or change; empty when the check is ok."""


Readable = str | Exception
"""A value read from the server, or why it could not be read."""


async def run_checks(app: App) -> list[Check]:
    """Every check, in a fixed order; reads the server, never changes it.

    A server too old for streamq is refused by ``app.redis()``; the checks
    then run on a connection of their own, so the version is reported as a
    problem (and the rest still read) instead of ending the report.
    """
    try:
        redis = await app.redis()
    except ServerTooOld as exc:
        url = app.settings.redis_url
        if url is None:
            return [_too_old(exc.found)]
        return await _unchecked(url, app)
    try:
        if app.is_cluster:  # the node holding the queue: its INFO, CONFIG and SCAN
            redis = await app.node_redis()
        checks = await _checks(redis, app.keys, app.settings)
        checks = [await _cluster_truth(app, c) if c.name == "cluster" else c for c in checks]
        from streamq.replication import replication_checks  # it imports this module

        checks += await replication_checks(app, redis)
        from streamq.doctor_partitions import check_partitions  # it imports this module too

        checks += await check_partitions(app)  # none unless the queue is partitioned
        return [*_embedded_check(app), *checks]
    except NoPermissionError as exc:
        # Raised while connecting (command errors come back as pipeline values):
        # no streamq process can connect as this user, whatever else is right.
        user = redis.connection_pool.connection_kwargs.get("username") or "default"
        denied = _DENIED_COMMAND.search(str(exc))
        setname = denied is not None and denied[1] == "client|setname"
        why = " (every streamq connection names itself with CLIENT SETNAME)" if setname else ""
        connection = Check(
            "connection", Status.PROBLEM,
            f"cannot connect as user {user}: {exc}{why}",
            f"ACL SETUSER {user} +{denied[1] if denied else '<the command named above>'}",
        )  # fmt: skip
        url = app.settings.redis_url
        if not setname or url is None:
            return [connection]
    # The other checks still tell the operator what else to fix: read them on a
    # connection that does not name itself.
    return [connection, *await _unchecked(url, app)]


def _embedded_check(app: App) -> list[Check]:
    """With no URL, say which server was checked: the embedded one, maybe just started."""
    server = app.embedded_server
    if server is None:
        return []
    status = server.status()
    pid = f"pid {status.pid}, " if status is not None else ""
    how = "started it for this check" if server.started else "already running"
    detail = f"no URL configured: the embedded server ({pid}data in {server.directory}), {how}"
    return [Check("server", Status.OK, detail)]


async def _unchecked(url: str, app: App) -> list[Check]:
    """The checks on a plain connection: no client name, no version gate."""
    if sentinel.is_sentinel_url(url):
        url = await sentinel.node_url_now(url, app.settings)
    unnamed = Redis.from_url(
        url,
        socket_timeout=app.settings.socket_timeout_s,
        socket_connect_timeout=app.settings.connect_timeout_s,
    )
    try:
        return await _checks(unnamed, app.keys, app.settings)
    finally:
        await unnamed.aclose()


async def _checks(redis: Redis, keys: Keyspace, settings: Settings) -> list[Check]:
    params = ("appendonly", "appendfsync", "maxmemory-policy", "maxmemory")
    async with redis.pipeline(transaction=False) as pipe:
        for section in ("server", "persistence", "cluster"):
            pipe.info(section)
        for param in params:
            pipe.config_get(param)
        pipe.execute_command("ACL", "WHOAMI")
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    server, persistence, cluster = replies[:3]
    config = {p: _config_value(p, r) for p, r in zip(params, replies[3:7], strict=True)}
    whoami: Any = replies[7]
    return [
        check_version(server),
        check_appendonly(config["appendonly"]),
        check_appendfsync(config["appendfsync"]),
        check_maxmemory_policy(config["maxmemory-policy"], config["maxmemory"]),
        check_persistence(persistence),
        check_cluster(cluster),
        await _check_acl(redis, keys, settings.priorities, whoami),
        await check_key_types(redis, keys),
        await _check_history(redis, keys, settings),
    ]


def _config_value(param: str, reply: Any) -> Readable:
    if isinstance(reply, Exception):
        return reply
    value = reply.get(param) if isinstance(reply, Mapping) else None
    if value is None:
        return LookupError("the server does not report it")
    return value.decode() if isinstance(value, bytes) else str(value)


def _cannot_read(name: str, what: str, error: Exception, fix: str) -> Check:
    return Check(name, Status.WARN, f"cannot read {what}: {error}", fix)


def _config_fix(param: str, value: str) -> str:
    return (
        f"CONFIG SET {param} {value}, then CONFIG REWRITE to keep it "
        f"(redis.conf: {param} {value}; on a managed service, its parameter settings)"
    )


def _unreadable_config_fix(param: str, want: str) -> str:
    return f"check that {param} is {want} in the provider's settings, or grant +config|get"


def check_version(info: Mapping[str, Any] | Exception) -> Check:
    if isinstance(info, Exception):
        return _cannot_read("version", "INFO server", info, "grant +info so doctor can check")
    version = server_version(info)
    label = str(version) + (
        f" (redis_version {version.redis_version})" if version.product != "Redis" else ""
    )
    if not version.supported:
        return _too_old(label, version.product)
    return Check("version", Status.OK, label)


def _too_old(found: str, product: str = "Redis") -> Check:
    wanted = ".".join(map(str, MIN_VALKEY if product == "Valkey" else MIN_REDIS))
    return Check(
        "version", Status.PROBLEM,
        f"{found}: streamq needs {product} {wanted} or later (every script starts with "
        "a #!lua flags= line, which older servers reject)",
        "upgrade to Redis 7.0 or later, or Valkey 7.2 or later",
    )  # fmt: skip


def check_appendonly(value: Readable) -> Check:
    if isinstance(value, Exception):
        fix = _unreadable_config_fix("appendonly", "yes")
        return _cannot_read("appendonly", "appendonly", value, fix)
    if value == "yes":
        return Check("appendonly", Status.OK, "yes: every write goes to the append-only file")
    return Check(
        "appendonly", Status.PROBLEM,
        f"{value}: a restart loses the jobs written since the last RDB snapshot, if any",
        _config_fix("appendonly", "yes"),
    )  # fmt: skip


def check_appendfsync(value: Readable) -> Check:
    if isinstance(value, Exception):
        fix = _unreadable_config_fix("appendfsync", "everysec or always")
        return _cannot_read("appendfsync", "appendfsync", value, fix)
    if value in ("always", "everysec"):
        return Check("appendfsync", Status.OK, f"{value}")
    return Check(
        "appendfsync", Status.PROBLEM,
        f"{value}: the OS decides when to flush, so a machine crash can lose ~30 s of jobs",
        _config_fix("appendfsync", "everysec"),
    )  # fmt: skip


def check_maxmemory_policy(value: Readable, maxmemory: Readable = "") -> Check:
    if isinstance(value, Exception):
        fix = _unreadable_config_fix("maxmemory-policy", "noeviction")
        return _cannot_read("maxmemory-policy", "maxmemory-policy", value, fix)
    if value == "noeviction":
        return Check(
            "maxmemory-policy", Status.OK,
            "noeviction: a full server refuses writes instead of dropping jobs",
        )  # fmt: skip
    if isinstance(maxmemory, Exception) or not maxmemory:
        limit = ""
    elif maxmemory == "0":
        limit = " (no maxmemory yet; a limit set later, or by a provider, starts evicting)"
    else:
        limit = f" (maxmemory {maxmemory} bytes)"
    return Check(
        "maxmemory-policy", Status.PROBLEM,
        f"{value}{limit}: under memory pressure the server evicts keys, and jobs with them",
        _config_fix("maxmemory-policy", "noeviction"),
    )  # fmt: skip


_PERSISTENCE_FIELDS = (
    "aof_last_write_status",
    "aof_last_bgrewrite_status",
    "rdb_last_bgsave_status",
)


def check_persistence(info: Mapping[str, Any] | Exception) -> Check:
    if isinstance(info, Exception):
        fix = "grant +info so doctor can check"
        return _cannot_read("persistence", "INFO persistence", info, fix)
    failing = [f"{f}:{info[f]}" for f in _PERSISTENCE_FIELDS if str(info.get(f, "ok")) != "ok"]
    if not failing:
        return Check(
            "persistence", Status.OK, "the last AOF write, AOF rewrite and RDB save succeeded"
        )
    return Check(
        "persistence", Status.PROBLEM,
        ", ".join(failing) + ": the server may refuse writes (MISCONF) or lose them on restart",
        "see the server log (usually a full disk or a data dir it cannot write), fix that, "
        "then BGREWRITEAOF or BGSAVE and run doctor again",
    )  # fmt: skip


def check_cluster(info: Mapping[str, Any] | Exception) -> Check:
    if isinstance(info, Exception):
        return _cannot_read("cluster", "INFO cluster", info, "grant +info so doctor can check")
    if str(info.get("cluster_enabled", 0)) == "1":
        return Check(
            "cluster", Status.OK,
            "cluster mode on: each queue's keys share one hash tag, so live on one shard",
        )  # fmt: skip
    return Check("cluster", Status.OK, "standalone (cluster mode off)")


async def _cluster_truth(app: App, check: Check) -> Check:
    """The cluster check as this App sees it: a cluster node reached by a plain
    client fails with MOVED on most queues, and a cluster must be ok."""
    enabled = check.status is Status.OK and check.detail.startswith("cluster mode on")
    if not app.is_cluster:
        if enabled:
            return Check(
                "cluster", Status.PROBLEM,
                "cluster_enabled:1, but this App uses a plain client: commands on "
                "slots of other nodes fail with MOVED",
                "use a cluster URL: redis+cluster://host:port (or STREAMQ_CLUSTER=1)",
            )  # fmt: skip
        return check
    if check.status is not Status.OK:
        return check
    if not enabled:
        return Check(
            "cluster", Status.PROBLEM,
            "the App is in cluster mode but the server says cluster_enabled:0",
            "use a redis:// URL for a standalone server (and unset STREAMQ_CLUSTER)",
        )  # fmt: skip
    from streamq.cluster import queue_node  # doctor runs rarely; keep the import local

    where = await queue_node(app)
    detail = (
        f"cluster_state:{where.state.state}, {where.state.masters} masters, "
        f"{where.state.slots_ok} of 16384 slots ok; queue {app.name!r} is slot "
        f"{where.slot} on master {where.node}, every key under the hash tag {{{app.name}}}"
    )
    if where.state.state != "ok":
        return Check(
            "cluster", Status.PROBLEM, detail,
            "fix the cluster (CLUSTER INFO, CLUSTER NODES): every slot needs a live master",
        )  # fmt: skip
    return Check("cluster", Status.OK, detail)


_SHOWN = 10


async def check_key_types(redis: Redis, keys: Keyspace) -> Check:
    """Every key of the queue holds the Redis type streamq keeps there.

    A key written by something else (SET on a stream's name, a list as the
    delayed set) fails every call on it with WRONGTYPE. SCANs the queue's
    keys and asks TYPE of them in pipelined batches.
    """
    wrong: list[WrongKeyType] = []
    seen = 0
    batch: list[bytes] = []
    try:
        async for key in redis.scan_iter(match=keys.pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                seen += len(batch)
                wrong += await find_wrong_types(redis, keys, batch)
                batch = []
        seen += len(batch)
        wrong += await find_wrong_types(redis, keys, batch)
    except RedisError as exc:
        return _cannot_read(
            "keys", f"the types of the keys of queue {keys.queue}", exc,
            "grant +scan +type so doctor can check",
        )  # fmt: skip
    if not wrong:
        return Check(
            "keys", Status.OK,
            f"{seen} keys of queue {keys.queue}, each of the type streamq keeps there",
        )  # fmt: skip
    listed = "; ".join(f"{w.key} is a {w.actual}, not a {w.expected}" for w in wrong[:_SHOWN])
    more = f"; and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else ""
    kinds = ", ".join(f"{kind}: {kind_type}" for kind, kind_type in KEY_TYPES.items())
    return Check(
        "keys", Status.PROBLEM,
        f"{len(wrong)} {'key' if len(wrong) == 1 else 'keys'} of queue {keys.queue} "
        f"{'holds' if len(wrong) == 1 else 'hold'} another type than streamq keeps "
        f"there ({kinds}), so every call on them fails with WRONGTYPE: {listed}{more}",
        "something other than streamq wrote them: look at each, then move it aside "
        "(RENAME <key> <key>.bad) or delete it (DEL <key>); streamq recreates its streams, "
        "groups and delayed set when it needs them",
    )  # fmt: skip


async def _check_history(redis: Redis, keys: Keyspace, settings: Settings) -> Check:
    try:
        history = await read_history(redis, keys, settings)
    except RedisError as exc:
        return _cannot_read(
            "history", f"the history streams of queue {keys.queue}", exc,
            "grant +time +xlen +xrange so doctor can check",
        )  # fmt: skip
    return check_history(history, settings.retention_s)


def check_history(history: History, retention_s: float | None) -> Check:
    """How far back each history stream reaches, and whether that is what was promised.

    Warns when a count cap (``retention_maxlen``, ``events_maxlen``) trims a
    stream before ``retention_s`` would, and when nothing trims a stream at all
    (``retention_s`` None and no cap: it grows until the server's memory is full).
    """
    parts = []
    for h in history.streams:
        if h.length == 0 or h.reach_s is None:
            parts.append(f"{h.name} empty")
            continue
        entries = f"{h.length} {'entry' if h.length == 1 else 'entries'}"
        memory = "" if h.memory_bytes is None else f", {format_bytes(h.memory_bytes)}"
        parts.append(f"{h.name} {entries} back {format_duration(h.reach_s)}{memory}")
    per_job = history.bytes_per_retained_job
    if history.memory_bytes is None:
        parts.append(
            "memory unknown: the server would not run MEMORY USAGE (grant +memory|usage to see it)"
        )
    elif per_job is not None:
        parts.append(f"~{format_bytes(per_job)} of history per retained job (estimate)")
    streams = "; ".join(parts)

    shortfalls = [h.shortfall for h in history.streams if h.shortfall is not None]
    if shortfalls:
        settings = list(dict.fromkeys(h.cap_setting for h in history.streams if h.cut_short))
        both = len(settings) > 1
        return Check(
            "history", Status.WARN,
            f"{'; '.join(shortfalls)} (a count cap, not retention_s, decides how much "
            "history is kept)",
            f"raise {' and '.join(map(str, settings))} (or set {'them' if both else 'it'} "
            "to None, to trim by retention_s alone), or archive the history before the "
            "cap trims it",
        )  # fmt: skip
    unbounded = [h.name for h in history.streams if h.kind != "dlq" and h.cap is None]
    if retention_s is None and unbounded:
        return Check(
            "history", Status.WARN,
            f"retention_s is None and no count cap trims {', '.join(unbounded)}: they grow "
            f"without bound until the server runs out of memory ({streams})",
            "set retention_s (seconds of history to keep; the default is 7 days), or a "
            "count cap: retention_maxlen for the priority streams, events_maxlen for the "
            "events stream",
        )  # fmt: skip
    promised = "None" if retention_s is None else format_duration(retention_s)
    return Check("history", Status.OK, f"retention_s {promised}; {streams}")


def required_commands(keys: Keyspace, priority: str) -> list[tuple[str, ...]]:
    """One sample call of each command streamq sends, on the App's own key names,
    so ACL DRYRUN checks key patterns as well as commands. Commands inside the Lua
    scripts count: a script runs them with the caller's permissions."""
    stream, job, lock = keys.stream(priority), keys.job("doctor"), keys.lock("doctor")
    return [
        ("CLIENT", "SETNAME", "streamq"),
        ("EVALSHA", "0" * 40, "1", stream),
        ("SCRIPT", "LOAD", "return 1"),
        ("XADD", stream, "*", "f", "v"),
        ("XREADGROUP", "GROUP", GROUP, "doctor", "COUNT", "1", "STREAMS", stream, ">"),
        ("XREAD", "COUNT", "1", "STREAMS", keys.events, "$"),
        ("XACK", stream, GROUP, "0-1"),
        ("XCLAIM", stream, GROUP, "doctor", "0", "0-1", "JUSTID"),
        ("XPENDING", stream, GROUP, "IDLE", "0", "-", "+", "1"),
        ("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM"),
        ("XGROUP", "DELCONSUMER", stream, GROUP, "doctor"),
        ("XINFO", "GROUPS", stream),
        ("XINFO", "CONSUMERS", stream, GROUP),
        ("XRANGE", stream, "-", "+"),
        ("XREVRANGE", keys.events, "+", "-"),
        ("XLEN", keys.dlq),
        ("XDEL", keys.dlq, "0-1"),
        ("XTRIM", stream, "MINID", "0"),
        ("ZADD", keys.delayed, "0", "m"),
        ("ZRANGEBYSCORE", keys.delayed, "-inf", "+inf"),
        ("ZREM", keys.delayed, "m"),
        ("ZCARD", keys.delayed),
        ("HSET", job, "f", "v"),
        ("HGET", job, "f"),
        ("HGETALL", job),
        ("HDEL", job, "f"),
        ("PEXPIRE", job, "1"),
        ("PERSIST", job),
        ("EXISTS", job),
        ("DEL", job),
        ("GET", lock),
        ("SET", lock, "v", "PX", "1", "NX"),
    ]


_DENIED_COMMAND = re.compile(r"permissions to run the '([^']+)' command")
_DENIED_KEY = re.compile(r"permissions to access the '([^']+)' key")


async def _check_acl(redis: Redis, keys: Keyspace, priorities: Sequence[str], whoami: Any) -> Check:
    fix_to_check = "grant +acl|whoami +acl|dryrun so doctor can check, or review the user by hand"
    if isinstance(whoami, Exception):
        return _cannot_read("acl", "the current user (ACL WHOAMI)", whoami, fix_to_check)
    user = whoami.decode() if isinstance(whoami, bytes) else str(whoami)
    calls = required_commands(keys, priorities[0])
    async with redis.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.execute_command("ACL", "DRYRUN", user, *call)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    errors = [(call, r) for call, r in zip(calls, replies, strict=True) if isinstance(r, Exception)]
    if len(errors) == len(calls):
        return _cannot_read(
            "acl", f"permissions of {user} (ACL DRYRUN)", errors[0][1], fix_to_check
        )
    commands: list[str] = []
    key_denied: list[str] = []
    for reply in replies:
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        if isinstance(reply, Exception) or text == "OK":
            continue
        if match := _DENIED_COMMAND.search(text):
            commands.append(match[1])
        elif (match := _DENIED_KEY.search(text)) and match[1] not in key_denied:
            key_denied.append(match[1])
    if commands or key_denied:
        detail = []
        if commands:
            detail.append(f"user {user} may not run {', '.join(commands)}")
        if key_denied:
            detail.append(f"user {user} may not access {', '.join(key_denied)}")
        rules = [f"+{c}" for c in commands] + ([f"~{keys.prefix}:*"] if key_denied else [])
        return Check(
            "acl", Status.PROBLEM, "; ".join(detail),
            f"ACL SETUSER {user} {' '.join(rules)} (then ACL SAVE if users live in an aclfile)",
        )  # fmt: skip
    if errors:
        unchecked = ", ".join(f"{' '.join(call[:1])} ({error})" for call, error in errors)
        return Check(
            "acl", Status.WARN,
            f"user {user} may run what was checked; could not check {unchecked}",
            "check those commands by hand (an older server may not know them)",
        )  # fmt: skip
    return Check("acl", Status.OK, f"user {user} may run all {len(calls)} commands streamq sends")
