"""Invariant 4: multi-key state changes are Lua scripts, loaded once, called by SHA.

The runtime half runs against a private valkey-server (this test flushes its
script cache, which must not disturb the session server other tests share).
The static half reads every shipped ``.lua`` file: every key a script
touches must come from ``KEYS`` (so the caller declares it, under the
queue's hash tag, and the script stays Redis Cluster safe), never a name
built inside the script.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

import streamq.scripts
from streamq import App, Worker
from streamq.embedded import ValkeyServer
from streamq.scripts import NAMES, Script

pytestmark = pytest.mark.anyio


@pytest.fixture
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    directory = tmp_path_factory.mktemp("sha")  # short: a unix socket path is <= 107 bytes
    server = ValkeyServer(directory, unix_socket=directory / "v.sock")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def private_app(private_server: ValkeyServer) -> AsyncIterator[App]:
    async with App("sha", redis_url=private_server.url) as application:
        yield application


SHAS = [Script.load(name).sha for name in NAMES]


async def scripts_cached(redis: Redis) -> list[bool]:
    return [bool(x) for x in await redis.script_exists(*SHAS)]


async def calls(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_scripts_run_by_sha_and_reload_after_a_script_flush(private_app: App) -> None:
    """Invariant 4: scripts go by EVALSHA, loaded once, and survive SCRIPT FLUSH.

    A fresh server knows no script: the first call gets NOSCRIPT and loads all
    of them once. Later jobs cost EVALSHA calls only: no EVAL, no further
    SCRIPT LOAD. After SCRIPT FLUSH (what a server restart or failover does
    to the cache) the next single call and the next pipelined batch reload
    transparently and jobs keep working. A client that sent EVAL each time
    would show eval calls; one that never reloaded would fail with NOSCRIPT
    after the flush.
    """

    @private_app.task(name="t")
    async def t(n: int) -> int:
        return n * 2

    redis = await private_app.redis()
    assert await scripts_cached(redis) == [False] * len(NAMES)
    first = await t.enqueue(1)
    assert await scripts_cached(redis) == [True] * len(NAMES)
    loads = await calls(redis, "script|load")
    assert loads == len(NAMES)

    batch = await t.enqueue_many([(n,) for n in range(2, 12)])
    with anyio.fail_after(10):
        await Worker(private_app, concurrency=4, burst=True).run()
    assert [await j.result(timeout=1) for j in [first, *batch]] == [n * 2 for n in range(1, 12)]
    assert await calls(redis, "script|load") == loads, "a script was loaded twice"
    assert await calls(redis, "eval") == 0
    assert await calls(redis, "evalsha") > 0

    await redis.script_flush()
    assert await scripts_cached(redis) == [False] * len(NAMES)
    after = await t.enqueue(20)  # one call: NOSCRIPT → load → retry
    assert await scripts_cached(redis) == [True] * len(NAMES)
    await redis.script_flush()
    pipelined = await t.enqueue_many([(21,), (22,)])  # a pipelined batch: same recovery
    with anyio.fail_after(10):
        await Worker(private_app, burst=True).run()
    assert [await j.result(timeout=1) for j in [after, *pipelined]] == [40, 42, 44]
    assert await calls(redis, "eval") == 0
    # Exactly one reload per flush: a call retried after NOSCRIPT is not enqueued twice.
    assert await calls(redis, "script|load") == 3 * len(NAMES)
    assert await redis.xlen(private_app.keys.stream("default")) == 14


# -- static: every key comes from KEYS ------------------------------------------------

LUA_DIR = Path(str(resources.files(streamq.scripts)))
LUA_FILES = sorted(LUA_DIR.glob("*.lua"))

# Commands whose first argument is a key; XGROUP/XINFO take it after a subcommand;
# XREADGROUP after STREAMS.
KEY_FIRST = {
    "XADD", "XACK", "XCLAIM", "XAUTOCLAIM", "XPENDING", "XRANGE", "XREVRANGE", "XDEL",
    "XTRIM", "XLEN", "HSET", "HGET", "HMGET", "HDEL", "HGETALL", "HINCRBY", "EXISTS", "DEL", "GET",
    "SET", "PEXPIRE", "EXPIRE", "PERSIST", "ZADD", "ZREM", "ZRANGEBYSCORE", "ZCARD",
    "ZRANGE", "ZSCORE", "INCR", "INCRBY", "TTL", "PTTL", "TYPE", "ZREMRANGEBYSCORE", "ZPOPMIN",
    "SADD", "SREM", "SCARD", "SMEMBERS", "SISMEMBER",
}  # fmt: skip
KEY_SECOND = {"XGROUP", "XINFO"}
KEYLESS = {"TIME"}  # commands that take no key (TIME: the server's clock, DESIGN.md)

CALL = re.compile(r"redis\.call\(\s*|pcall\(\s*redis\.call\s*,\s*")


def strip_comments(source: str) -> str:
    return re.sub(r"--[^\n]*", "", source)


def balanced_end(text: str, start: int, open_: str = "(", close: str = ")") -> int:
    """Index just past the bracket that closes the one opened before ``start``."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise AssertionError(f"unbalanced {open_}{close} in {text[start - 20 : start + 40]!r}")


def split_top(text: str) -> list[str]:
    """Split on commas outside brackets and parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def drop_indexes(expr: str) -> str:
    """``KEYS[...]`` → ``KEYS``, ``t[...]`` → ``t`` (brackets balanced)."""
    out, i = "", 0
    while i < len(expr):
        if expr[i] == "[":
            i = balanced_end(expr, i + 1, "[", "]")
            continue
        out += expr[i]
        i += 1
    return out


def from_keys(expr: str, bound: set[str]) -> bool:
    """True when ``expr`` can only evaluate to a value taken from KEYS."""
    if "'" in expr or '"' in expr or ".." in expr:
        return False
    # unpack(KEYS, i, j): KEYS's own values, whatever range the bounds pick.
    spread = re.fullmatch(r"unpack\(\s*(\w+)\s*((?:,[^,()]+){0,2})\)", expr.strip())
    if spread:
        return spread.group(1) == "KEYS" or spread.group(1) in bound
    names = re.findall(r"[A-Za-z_]\w*", drop_indexes(expr))
    names = [n for n in names if n != "or"]
    return bool(names) and all(n == "KEYS" or n in bound for n in names)


def key_bound_names(source: str) -> set[str]:
    """Local names (and tables) whose values all come from KEYS, to a fixpoint."""
    bound: set[str] = set()
    for match in re.finditer(r"for\s+\w+\s*,\s*(\w+)\s+in\s+ipairs\(\s*KEYS\s*\)", source):
        bound.add(match.group(1))
    assignments = re.findall(
        r"^[ \t]*(?:local[ \t]+)?([\w \t,\[\]()+\-*#]+?)[ \t]*=(?!=)[ \t]*(.+)$", source, re.M
    )
    changed = True
    while changed:
        changed = False
        for targets, values in assignments:
            for target, value in zip(split_top(targets), split_top(values), strict=False):
                name = re.match(r"\w+", target)
                if name and name.group(0) not in bound and from_keys(value, bound):
                    bound.add(name.group(0))
                    changed = True
    return bound


def key_arguments(source: str) -> list[tuple[str, str]]:
    """(command, key expression) for every redis.call in the source."""
    found = []
    for match in CALL.finditer(source):
        end = balanced_end(source, match.end())
        args = split_top(source[match.end() : end - 1])
        command = args[0].strip("'\"").upper()
        if command in KEY_FIRST:
            found.append((command, args[1]))
        elif command in KEY_SECOND:
            found.append((command, args[2]))
        elif command in KEYLESS:
            continue
        elif command == "XREADGROUP":
            upper = [a.strip("'\"").upper() for a in args]
            found.append((command, args[upper.index("STREAMS") + 1]))
        else:
            raise AssertionError(f"unknown command {command}: add it to KEY_FIRST/KEY_SECOND")
    return found


# A key-like literal: no whitespace, with a separator (':job:', '{q}'); 'failed: ' is a value.
KEY_LITERAL = r"['\"][^'\"\s]*[:{}][^'\"\s]*['\"]"
KEY_CONCATENATION = re.compile(
    rf"KEYS\[[^\]]*\]\s*\.\.|\.\.\s*KEYS\b|{KEY_LITERAL}\s*\.\.|\.\.\s*{KEY_LITERAL}"
)


def key_concatenations(source: str) -> list[str]:
    return KEY_CONCATENATION.findall(source)


def test_every_script_is_shipped() -> None:
    assert {p.stem for p in LUA_FILES} == set(NAMES)


@pytest.mark.parametrize("path", LUA_FILES, ids=[p.stem for p in LUA_FILES])
def test_scripts_take_every_key_from_keys(path: Path) -> None:
    """Invariant 4 (and Cluster safety): no key name is built inside a script.

    Every key argument of every ``redis.call`` must be ``KEYS[...]`` or a
    local bound only from KEYS; no string concatenation (``..``) may involve
    KEYS or a literal with a key separator. A script that built
    ``KEYS[1] .. ':job:' .. id`` (as some peers do) touches an undeclared
    key, which Redis Cluster rejects and this test names.
    """
    source = strip_comments(path.read_text())
    bound = key_bound_names(source)
    undeclared = [
        (command, expr) for command, expr in key_arguments(source) if not from_keys(expr, bound)
    ]
    assert not undeclared, f"{path.name}: key arguments not from KEYS: {undeclared}"
    concatenations = key_concatenations(source)
    assert not concatenations, f"{path.name}: key-like concatenation: {concatenations}"


def test_the_static_check_catches_a_built_key() -> None:
    """The check above is not vacuous: it flags the patterns it is meant to catch."""
    built = "local job = KEYS[1] .. ':job:' .. ARGV[1]\nredis.call('HSET', job, 'a', 1)\n"
    literal = "redis.call('DEL', 'streamq:{q}:lock:janitor')\n"
    from_argv = "redis.call('GET', ARGV[1])\n"
    spread_argv = "redis.call('EXISTS', unpack(ARGV, 1, 2))\n"
    for source in (built, literal, from_argv, spread_argv):
        bound = key_bound_names(source)
        assert any(not from_keys(expr, bound) for _, expr in key_arguments(source)), source
    assert key_concatenations(built) == ["KEYS[1] ..", "':job:' .."]
    assert key_concatenations("local e = 'failed: ' .. ARGV[1]") == []
    fine = "local s, id = KEYS[tonumber(ARGV[1])], ARGV[2]\nredis.call('XACK', s, 'g', id)\n"
    assert all(from_keys(e, key_bound_names(fine)) for _, e in key_arguments(fine))
    spread = "redis.call('EXISTS', unpack(KEYS, 4, 3 + n))\n"
    assert all(from_keys(e, key_bound_names(spread)) for _, e in key_arguments(spread))
