"""Least-privilege ACL rules, one per role: what ``streamq acl`` prints.

Each role gets exactly the commands its code paths send, counting the
commands inside the Lua scripts it runs: since Redis 7 a script's
``redis.call`` is checked against the caller's ACL (commands and keys), so a
role that may run ``EVALSHA`` and ``SCRIPT LOAD`` can run any Lua it likes,
but only with the commands and keys below. The lists are the contract the
tests check by running each role under exactly its rule (tests/test_acl.py).

Keys: every key of a queue is ``<prefix>:{<queue>}:<kind>...`` (keys.py), so
a rule covers one queue (``--queue``) or every queue of a prefix. The
producer gets only the key kinds enqueueing writes (not the DLQ, cron,
limits, slots or leases; ``producer-chains`` adds the DLQ for ``after=``), and
the read-only dashboard user reads keys only (``%R~``). What these rules
cannot promise is in ``LIMITS`` and the README.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamq.errors import ConfigError
from streamq.settings import check_name

CONNECT = (
    "hello", "client|setname", "client|setinfo", "ping", "select", "info", "time",
    "multi", "exec", "discard",
)  # fmt: skip
"""Every role: the connection handshake (``client_name``, RESP3, a database in
the URL), the connect-time check's ``INFO server`` (without it the check falls
back to HELLO, but each connection then leaves a denial in ``ACL LOG``), the
server clock, and transactions (redis-py's default pipeline; each command
queued in one is checked on its own)."""
SCRIPTS = ("evalsha", "script|load")
"""Running the bundled scripts (loaded on first use)."""

READ = (
    "exists", "type", "pttl", "get", "mget", "hget", "hmget", "hgetall", "smembers", "scard",
    "zcard", "zcount", "zrange", "zrangebyscore", "zscore", "zmscore", "xlen", "xrange",
    "xrevrange", "xread", "xpending", "xinfo|stream", "xinfo|groups", "xinfo|consumers",
    "scan", "memory|usage",
)  # fmt: skip
"""What the dashboard, ``stats`` and job inspection read."""

PRODUCER = (
    *CONNECT, *SCRIPTS,
    # enqueue.lua, chain.lua, unique.lua (and the commands they read with)
    "exists", "type", "pttl", "get", "set", "hset", "hget", "hdel", "pexpire", "sadd", "srem",
    "scard", "zadd", "zrem", "zcard", "zrangebyscore", "xadd", "xlen", "xgroup|create",
    "xinfo|groups",
    # job status, results (waiters read the events stream), job details
    "hmget", "hgetall", "xread", "xrange", "xrevrange",
    # a partitioned queue's high-water mark: raised at enqueue, read to find a job
    "zscore",
)  # fmt: skip
PRODUCER_KINDS = (
    "stream:*", "job:*", "events", "delayed", "unique:*", "deferred", "parents", "children:*",
    "partitions",
)  # fmt: skip
"""The key kinds (keys.py) enqueueing and unique keys use: not the DLQ, cron,
limits, slots, leases or cancel requests."""
CHAINS_KINDS = (*PRODUCER_KINDS, "dlq")
"""``after=`` (chain.lua) is passed the DLQ key, since a job enqueued after a
parent that already failed goes straight there. A write-only ``%W~`` selector
would not do (EVALSHA needs read and write access to every key it is passed),
and XADD's MAXLEN argument can trim the stream it writes, so a producer with
this key can empty the DLQ: hence a separate role."""

WORKER = (
    *CONNECT, *SCRIPTS, *READ,
    # its own commands and those of the scripts it runs (fetch, start, complete, dead,
    # promote, heartbeat, reclaim, trim, lost, prune_consumers, lease, rate, slots, ...)
    "xreadgroup", "xack", "xclaim", "xadd", "xtrim", "xgroup|create", "xgroup|delconsumer",
    "hset", "hdel", "hget", "set", "del", "pexpire", "persist", "sadd", "srem",
    "zadd", "zrem", "zpopmin", "zremrangebyscore",
)  # fmt: skip

DASHBOARD_READ_ONLY = (*CONNECT, *READ)

DASHBOARD = (
    *DASHBOARD_READ_ONLY, *SCRIPTS,
    # its actions: DLQ requeue (requeue.lua) and purge (XDEL, XTRIM), cancel a delayed
    # job (cancel.lua), run one now (run_now.lua)
    "xadd", "xdel", "xtrim", "xgroup|create", "hset", "hdel", "pexpire", "persist",
    "zadd", "zrem",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    commands: tuple[str, ...]
    kinds: tuple[str, ...] | None
    """Key kinds under the queue's hash tag; None: every key of the queue."""
    read_only_keys: bool
    about: str


_ROLES = (
    Role("producer", PRODUCER, PRODUCER_KINDS, False,
         "enqueue (delayed, unique), job status and results; no DLQ access"),
    Role("producer-chains", PRODUCER, CHAINS_KINDS, False,
         "a producer that also enqueues with after= (it can write the DLQ)"),
    Role("worker", WORKER, None, False,
         "run jobs: fetch, retries, delays, reclaim, DLQ, limits and the janitor's duties"),
    Role("dashboard", DASHBOARD, None, False,
         "every dashboard page and action (DLQ requeue and purge, cancel, run now)"),
    Role("dashboard-read-only", DASHBOARD_READ_ONLY, None, True,
         "every dashboard page (create_dashboard(read_only=True)), `streamq stats`"),
)  # fmt: skip
ROLES: dict[str, Role] = {role.name: role for role in _ROLES}

LIMITS = (
    "Key patterns bound a role to one queue's keys (or one prefix's); inside them a rule "
    "cannot tell one job from another: a producer may read (HGETALL) and overwrite (HSET) the "
    "job hash, and so the result, of a job it did not enqueue.",
    "ACL rules cannot restrict a command's arguments: whoever may XADD to a stream may trim "
    "it (XADD ... MAXLEN 0), and SET or PEXPIRE can replace or expire any key the role may "
    "write. A producer can therefore destroy its queue's unread jobs; what it cannot do is "
    "take jobs (no XREADGROUP, XCLAIM, XACK), use DEL, UNLINK, XDEL or XTRIM, or touch keys "
    "outside its patterns: the plain producer has no access at all to the DLQ, cron, "
    "rate-limit, slot, lease and cancel keys, or to another queue.",
    "A worker may write every key of its queue (it must: it moves jobs to the DLQ, trims, "
    "reclaims). Producers' entries are not authenticated by ACLs: a producer can enqueue any "
    "task with any arguments (see signed messages).",
    "SCAN is a keyless command: a role that has it (worker, dashboards) sees the key names of "
    "every queue, though it can read the values of its own queue's keys only.",
    "SCRIPT LOAD and EVALSHA let a role run any Lua, but each redis.call inside it is checked "
    "against the role's commands and keys (Redis 7+), so scripts grant nothing extra.",
)


def roles() -> Sequence[str]:
    return tuple(ROLES)


def key_patterns(role: str, prefix: str = "streamq", queue: str | None = None) -> list[str]:
    """The ``~``/``%R~`` key selectors of ``role`` for one queue, or every queue of ``prefix``."""
    found = _role(role)
    check_name("prefix", prefix)
    # One queue: its own tag and its partitions' (``{emails#3}``; a queue name has no '#').
    tags = ["*"] if queue is None else [check_name("queue name", queue), f"{queue}#*"]
    mark = "%R~" if found.read_only_keys else "~"
    if found.kinds is None:
        if queue is None:
            return [f"{mark}{prefix}:*"]
        return [f"{mark}{prefix}:{{{tag}}}:*" for tag in tags]
    selectors = []
    for tag in tags:
        for kind in found.kinds:
            selector, _, name = kind.rpartition("~")
            selectors.append(f"{selector}~{prefix}:{{{tag}}}:{name}")
    return selectors


def rule(role: str, prefix: str = "streamq", queue: str | None = None) -> str:
    """The ACL rule of ``role`` (no user, no password): ``resetkeys resetchannels -@all +... ~...``.

    Append it to ``ACL SETUSER <user> reset on ><password>`` (or a users.acl line).
    """
    found = _role(role)
    commands = [f"+{command}" for command in dict.fromkeys(found.commands)]
    return " ".join(
        ["resetkeys", "resetchannels", "-@all", *commands, *key_patterns(role, prefix, queue)]
    )


def setuser(
    role: str, user: str, password: str, prefix: str = "streamq", queue: str | None = None
) -> str:
    """The whole ``ACL SETUSER`` command for one user of ``role``."""
    return f"ACL SETUSER {user} reset on >{password} {rule(role, prefix, queue)}"


def _role(role: str) -> Role:
    try:
        return ROLES[role]
    except KeyError:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}") from None
