"""``streamq doctor`` against real servers: a sound one, a misconfigured one, ACL users.

The misconfigured server is a dedicated valkey-server on a loopback port with
AOF off, ``appendfsync no`` and an evicting ``maxmemory-policy`` (valkey-server
takes the last value of a repeated option, so ``extra_args`` override the
embedded defaults). Its ACL users each lack something streamq needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamq import App, Settings
from streamq.doctor import (
    Check,
    Status,
    check_cluster,
    check_persistence,
    check_version,
    run_checks,
)
from streamq.embedded import ValkeyServer
from streamq.janitor import Janitor
from tests.compat.plugin import session_server
from tests.conftest import drop_queue, queue_name, subprocess_env
from tests.history import fill_history, user_without_memory
from tests.servers import free_port, old_redis

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pw-for-tests"


@pytest.fixture(scope="module")
def misconfigured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    port = free_port()
    server = ValkeyServer(
        tmp_path_factory.mktemp("misconfigured"),
        port=port,
        appendfsync="no",
        extra_args=["--maxmemory-policy", "allkeys-lru", "--appendonly", "no"],
    )
    server.start()
    admin = redis.Redis(host="127.0.0.1", port=port)
    try:
        # May read, and may ask what it may do: the doctor can list what is missing.
        admin.acl_setuser(
            "limited", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
            commands=["+@read", "+client|setname", "+acl|whoami", "+acl|dryrun"],
        )  # fmt: skip
        # Everything, but only on other keys.
        admin.acl_setuser(
            "elsewhere", enabled=True, passwords=[f"+{PASSWORD}"], keys=["other:*"],
            commands=["+@all"],
        )  # fmt: skip
        # Read only, and not even CLIENT SETNAME: no streamq connection can open.
        admin.acl_setuser(
            "bare", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@read"]
        )
    finally:
        admin.close()
    yield server
    server.stop()


def as_user(server: ValkeyServer, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}"


async def checks_for(url: str) -> dict[str, Check]:
    """run_checks on a fresh App, as ``streamq doctor`` does: not entered first,
    since entering it already refuses some servers doctor reports on."""
    app = App(queue_name(), redis_url=url)
    try:
        return {check.name: check for check in await run_checks(app)}
    finally:
        await app.close()


def streamq_doctor(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamq", "doctor", "tests.apps.slow:app", *args],
        cwd=ROOT, env=subprocess_env(url, STREAMQ_TEST_QUEUE=queue_name()),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_the_embedded_configuration_passes_every_check(redis_url: str) -> None:
    """The session server is started as the embedded default is: AOF, everysec,
    noeviction, default user. Every check is ok and the command exits 0."""
    checks = await checks_for(redis_url)
    assert list(checks) == [
        "version", "appendonly", "appendfsync", "maxmemory-policy", "persistence", "cluster",
        "acl", "keys", "history",
    ]  # fmt: skip
    assert {c.status for c in checks.values()} == {Status.OK}, checks
    assert checks["history"].detail.startswith("retention_s 7.0d; high empty; default empty")
    assert checks["version"].detail.partition(" (")[0] == session_server()
    assert checks["acl"].detail.startswith("user default may run all")

    result = streamq_doctor(redis_url, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert {c["status"] for c in report["checks"]} == {"ok"}


async def test_misconfigured_server_problems_come_with_fixes(misconfigured: ValkeyServer) -> None:
    """AOF off, fsync left to the OS and an evicting policy can each lose jobs: each
    is a problem with the CONFIG SET and the redis.conf line, and the exit code is 1."""
    checks = await checks_for(misconfigured.url)
    problems = {name for name, c in checks.items() if c.status is Status.PROBLEM}
    assert problems == {"appendonly", "appendfsync", "maxmemory-policy"}
    policy = checks["maxmemory-policy"]
    assert policy.detail.startswith("allkeys-lru")
    assert "CONFIG SET maxmemory-policy noeviction" in policy.fix
    assert "redis.conf: maxmemory-policy noeviction" in policy.fix
    assert "CONFIG SET appendonly yes" in checks["appendonly"].fix
    assert "CONFIG SET appendfsync everysec" in checks["appendfsync"].fix
    assert all(c.fix == "" for c in checks.values() if c.status is Status.OK)

    result = streamq_doctor(misconfigured.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "problem  maxmemory-policy" in result.stdout
    assert "fix: CONFIG SET maxmemory-policy noeviction" in result.stdout
    assert "3 problems, 0 warnings" in result.stdout


async def test_acl_check_names_the_commands_a_limited_user_lacks(
    misconfigured: ValkeyServer,
) -> None:
    """ACL DRYRUN with the App's own key names finds what a read-only user may not do,
    including commands only the Lua scripts send, and the fix grants exactly those."""
    checks = await checks_for(as_user(misconfigured, "limited"))
    assert "connection" not in checks  # PING is not needed: not a problem
    acl = checks["acl"]
    assert acl.status is Status.PROBLEM
    denied = acl.detail.removeprefix("user limited may not run ").split(", ")
    for command in ("evalsha", "script|load", "xadd", "xreadgroup", "xack", "xclaim",
                    "xtrim", "xgroup|create", "zadd", "hset", "del"):  # fmt: skip
        assert command in denied
    assert "xrange" not in denied and "xlen" not in denied  # +@read covers these
    assert acl.fix.startswith("ACL SETUSER limited +")
    assert "+evalsha" in acl.fix and "+xadd" in acl.fix

    keys = (await checks_for(as_user(misconfigured, "elsewhere")))["acl"]
    assert keys.status is Status.PROBLEM
    assert "may not access streamq:{" in keys.detail
    assert "~streamq:*" in keys.fix and "may not run" not in keys.detail


async def test_denied_admin_commands_are_warnings_not_crashes(misconfigured: ValkeyServer) -> None:
    """A user denied CONFIG, INFO and ACL (as on managed services) gets "cannot read"
    warnings; the one thing that stops every worker (no CLIENT SETNAME, which each
    streamq connection sends) is a problem, and the other checks still run."""
    checks = await checks_for(as_user(misconfigured, "bare"))
    assert checks["connection"].status is Status.PROBLEM
    assert "CLIENT SETNAME" in checks["connection"].detail
    assert checks["connection"].fix == "ACL SETUSER bare +client|setname"
    for name in ("version", "appendonly", "appendfsync", "maxmemory-policy", "acl"):
        assert checks[name].status is Status.WARN, checks[name]
        assert checks[name].detail.startswith("cannot read"), checks[name]
        assert checks[name].fix
    assert "no permissions" in checks["appendonly"].detail


@pytest.mark.parametrize(
    ("info", "status"),
    [
        ({"redis_version": "6.0.16"}, Status.PROBLEM),
        ({"redis_version": "6.2.14"}, Status.PROBLEM),
        ({"redis_version": "7.0.0"}, Status.OK),
        ({"redis_version": "7.4.1"}, Status.OK),
        ({"redis_version": "7.2.4", "valkey_version": "7.2.5", "server_name": "valkey"}, Status.OK),
    ],
)
def test_version_rule(info: dict[str, str], status: Status) -> None:
    """The scripts' ``#!lua flags=`` line needs Redis 7.0; on Valkey its own version counts."""
    check = check_version(info)
    assert check.status is status
    if status is Status.PROBLEM:
        assert "streamq needs Redis 7.0 or later" in check.detail
        assert "Redis 7.0" in check.fix


async def test_a_server_older_than_redis_7_is_a_failed_version_check() -> None:
    """App.redis() refuses such a server (ServerTooOld); doctor still reports,
    with the version as the problem, and exits 1. The stub (tests/servers.py)
    answers the handshake and INFO only, so the checks that need CONFIG, ACL
    or SCAN are warnings (cannot read); none is a crash or another problem."""
    with old_redis("6.2.14") as port:
        url = f"redis://127.0.0.1:{port}"
        checks = await checks_for(url)
        result = streamq_doctor(url)
    version = checks["version"]
    assert version.status is Status.PROBLEM, checks
    assert version.detail.startswith("Redis 6.2.14: streamq needs Redis 7.0 or later")
    others = {name: c.status for name, c in checks.items() if name != "version"}
    assert others["appendonly"] is others["acl"] is others["keys"] is Status.WARN, checks
    assert Status.PROBLEM not in others.values(), checks
    assert result.returncode == 1, result.stdout + result.stderr
    assert "streamq needs Redis 7.0 or later" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_failed_persistence_write_is_a_problem_and_cluster_mode_is_reported() -> None:
    """The server's own status fields decide; cluster mode is information, not a fault."""
    failing = check_persistence(
        {"aof_last_write_status": "err", "aof_last_bgrewrite_status": "ok",
         "rdb_last_bgsave_status": "ok"}
    )  # fmt: skip
    assert failing.status is Status.PROBLEM and "aof_last_write_status:err" in failing.detail
    assert "server log" in failing.fix
    cluster = check_cluster({"cluster_enabled": 1})
    assert cluster.status is Status.OK and "cluster mode on" in cluster.detail


def test_doctor_without_a_url_says_it_checked_the_embedded_server_it_started(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no URL anywhere, doctor names the embedded server and whether it started it.

    Before, the report read as if a configured server had been checked, while
    doctor had just started a fresh embedded one (whose defaults pass).
    """
    from streamq import embedded
    from streamq.cli import main

    path = "tests.apps.slow:app"
    assert main(["doctor", path]) == 0
    out = capsys.readouterr().out
    status = embedded.Embedded(embedded.data_dir()).status()
    assert status is not None
    (line,) = [line for line in out.splitlines() if line.split()[1:2] == ["server"]]
    assert "embedded" in line and "started it for this check" in line, out
    assert str(status.pid) in line and str(embedded.data_dir()) in line, out
    assert main(["doctor", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (server,) = [c for c in report["checks"] if c["name"] == "server"]
    assert "already running" in server["detail"], server


async def history_check(app: App) -> Check:
    return {check.name: check for check in await run_checks(app)}["history"]


async def test_history_check_warns_when_a_count_cap_cuts_history_short_of_retention(
    redis_url: str,
) -> None:
    """Given retention_maxlen 30 and events_maxlen 20, and 300 acked entries in the
    default stream and the events stream, trimmed to about their caps: both reach
    back seconds, not retention_s's 7 days, and the check warns, naming each setting
    to raise (or set to None) and the archive as the other way out. Checked with the
    default settings, the same streams are ok: each one's entries, reach and memory."""
    name = queue_name()
    capped = App(
        name, settings=Settings(redis_url=redis_url, retention_maxlen=30, events_maxlen=20)
    )
    async with capped:
        try:
            await fill_history(capped, 300, events_cap=20)
            await Janitor(capped, "test").trim()
            check = await history_check(capped)
            assert check.status is Status.WARN, check
            assert "default: cut by retention_maxlen 30: reaches back" in check.detail
            assert "events: cut by events_maxlen 20: reaches back" in check.detail
            assert "not retention_s's 7.0d" in check.detail
            assert check.fix.startswith("raise retention_maxlen and events_maxlen"), check.fix
            assert "None" in check.fix and "archive" in check.fix

            async with App(name, redis_url=redis_url) as uncapped:
                check = await history_check(uncapped)
            assert check.status is Status.OK, check
            assert check.fix == ""
            default = next(p for p in check.detail.split("; ") if p.startswith("default "))
            assert default.startswith("default 100 entries back "), check.detail
            assert default.endswith("B"), check.detail  # its memory: "4.5 KiB"
            assert "per retained job (estimate)" in check.detail
        finally:
            await drop_queue(capped)


async def test_history_check_warns_that_without_retention_history_grows_without_bound(
    redis_url: str,
) -> None:
    """retention_s None and no count cap: nothing ever trims the priority streams."""
    app = App(queue_name(), settings=Settings(redis_url=redis_url, retention_s=None))
    async with app:
        check = await history_check(app)
    assert check.status is Status.WARN, check
    assert "retention_s is None" in check.detail and "grow without bound" in check.detail
    assert "high, default, low" in check.detail
    assert "retention_s" in check.fix and "retention_maxlen" in check.fix


async def test_history_check_with_memory_denied_says_unknown(app: App, redis_url: str) -> None:
    """A user denied MEMORY gets the reach of each stream and "memory unknown"."""
    await app.redis()
    async with user_without_memory(app, redis_url) as url, App(app.name, redis_url=url) as limited:
        check = await history_check(limited)
    assert check.status is Status.OK, check
    assert "memory unknown" in check.detail and "+memory" in check.detail
