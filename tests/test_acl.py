"""Each role runs under exactly the rule ``streamq acl`` prints, and that is enough.

A fresh ACL user per role is made on the session valkey-server with
``ACL SETUSER <user> reset on ><password> <streamq.acl.rule(role)>``; the App
gets the user's credentials in its URL. "Enough" is checked twice: the role's
operations succeed, and ``ACL LOG`` holds no denial for the user afterwards
(a denied command that a retry or a log line swallowed would show there).
The negative cases show the NOPERM a role gets for what it must not do.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest
import redis.asyncio
from redis.exceptions import NoPermissionError

from streamq import App, JobStatus, Settings, acl
from streamq.cli import main
from streamq.dashboard import create_dashboard
from streamq.dlq import DeadLetters
from streamq.janitor import Janitor
from streamq.keys import GROUP
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio
FAST = {"janitor_interval_s": 0.05, "visibility_timeout_s": 0.5, "retention_s": 0.0}


@dataclass
class User:
    name: str
    url: str
    admin: redis.asyncio.Redis

    async def denials(self) -> list[str]:
        log = cast(list[dict[str, Any]], await self.admin.acl_log(count=128))
        return [
            f"{entry['reason']} {entry['object']} ({entry['context']})"
            for entry in log
            if entry["username"] == self.name
        ]


@asynccontextmanager
async def acl_user(redis_url: str, role: str, queue: str) -> AsyncIterator[User]:
    """A user with exactly ``acl.rule(role)`` for ``queue``; its URL carries the password."""
    admin = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    name, password = f"t-{role}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await admin.execute_command(
        "ACL", "SETUSER", name, "reset", "on", f">{password}", *acl.rule(role, queue=queue).split()
    )
    scheme, _, rest = redis_url.partition("://")
    user = User(name, f"{scheme}://{name}:{password}@{rest}", admin)
    try:
        yield user
    finally:
        sys.stdout.write(f"ACL LOG of {role}: {await user.denials()}\n")  # shown on failure
        await admin.execute_command("ACL", "DELUSER", name)
        await admin.aclose()


def role_app(queue: str, user: User) -> App:
    return App(queue, settings=Settings(redis_url=user.url, **FAST))  # type: ignore[arg-type]


def tasks(application: App) -> dict[str, Any]:
    calls: dict[str, int] = {}

    @application.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    @application.task(name="flaky", max_retries=2, backoff_base=0.01, backoff_cap=0.02)
    async def flaky() -> str:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] < 2:
            raise RuntimeError("first try fails")
        return "second try"

    @application.task(name="doomed", max_retries=0)
    async def doomed() -> None:
        raise ValueError("to the DLQ")

    return {"add": add, "flaky": flaky, "doomed": doomed}


async def test_producer_and_worker_rules_are_enough_for_every_duty(redis_url: str) -> None:
    """The producer enqueues (now, delayed, unique, chained) and waits for results; the
    worker runs them: a retry, a delayed job, a DLQ entry, a message reclaimed
    from a dead consumer, and every janitor duty (promote, trim, lost jobs,
    idle consumers, unique keys). Neither user has a denial in ACL LOG."""
    queue = queue_name()
    async with (
        acl_user(redis_url, "producer", queue) as producer_user,
        acl_user(redis_url, "producer-chains", queue) as chains_user,
        acl_user(redis_url, "worker", queue) as worker_user,
    ):
        chaining = role_app(queue, chains_user)
        chained = tasks(chaining)
        producer = App(  # max_pending: enqueue also counts what is queued
            queue,
            settings=Settings(redis_url=producer_user.url, max_pending=1000, **FAST),  # type: ignore[arg-type]
        )
        worker = role_app(queue, worker_user)
        sent, _ = tasks(producer), tasks(worker)
        async with producer, chaining, worker:
            now = await sent["add"].enqueue(2, 3)
            later = await sent["add"].enqueue_in(0.1, 4, 5)
            once = await sent["add"].with_options(key="k1").enqueue(1, 1)
            child = await chained["add"].with_options(after=[now.id]).enqueue(6, 6)
            flaky = await sent["flaky"].enqueue()
            doomed = await sent["doomed"].enqueue()
            # a consumer that took a message and died: the worker reclaims it
            stolen = await sent["add"].enqueue(10, 10)
            admin = worker_user.admin
            await admin.xreadgroup(GROUP, "dead-consumer", {worker.keys.stream("default"): ">"})
            async with running_worker(worker, concurrency=2):
                assert await now.result(timeout=10) == 5
                assert await later.result(timeout=10) == 9
                assert await once.result(timeout=10) == 2
                assert await child.result(timeout=10) == 12
                assert await flaky.result(timeout=10) == "second try"
                assert await doomed.wait(timeout=10) == JobStatus.FAILED
                orphan = await chained["add"].with_options(after=[doomed.id]).enqueue(0, 0)
                assert await orphan.wait(timeout=10) == JobStatus.DEAD
                assert await stolen.result(timeout=10) == 20
                assert await now.status() == JobStatus.SUCCEEDED
                assert (await now.details()).task == "add"
                assert [u.status async for u in now.watch(timeout=5)][-1] == JobStatus.SUCCEEDED
            janitor = Janitor(worker, "acl-test", interval_s=0.05)
            await janitor.run_once()
            assert await DeadLetters(worker).count() == 2
            assert await producer_user.denials() == []
            assert await chains_user.denials() == []
            with pytest.raises(NoPermissionError):  # the plain producer cannot chain
                await sent["add"].with_options(after=[now.id]).enqueue(0, 0)
            assert await worker_user.denials() == []
            await DeadLetters(worker).purge()
        async with App(queue, redis_url=redis_url) as owner:
            await drop_queue(owner)


async def test_a_partitioned_queue_runs_under_the_queues_rules(redis_url: str) -> None:
    """``--queue emails`` covers every partition (``{emails#i}``), and a producer may
    raise the partition count's high-water mark; no denial for either user."""
    queue = queue_name()
    async with (
        acl_user(redis_url, "producer", queue) as producer_user,
        acl_user(redis_url, "worker", queue) as worker_user,
    ):
        producer = App(queue, settings=Settings(redis_url=producer_user.url, partitions=3, **FAST))  # type: ignore[arg-type]
        worker = App(queue, settings=Settings(redis_url=worker_user.url, partitions=3, **FAST))  # type: ignore[arg-type]
        sent, _ = tasks(producer), tasks(worker)
        async with producer, worker:
            jobs = [await sent["add"].enqueue(n, n) for n in range(6)]
            assert {job.partition for job in jobs} == {0, 1, 2}
            async with running_worker(worker, concurrency=2):
                assert [await job.result(timeout=10) for job in jobs] == [2 * n for n in range(6)]
            assert await producer_user.denials() == []
            assert await worker_user.denials() == []
        async with App(queue, redis_url=redis_url, partitions=3) as owner:
            for index in range(3):
                await drop_queue(owner.partition(index))


async def test_the_producer_cannot_touch_the_dlq_or_steal_jobs(redis_url: str) -> None:
    """The DLQ is outside a producer's key patterns (no read, write, trim or
    delete, even through a script), and it lacks the commands that take or
    remove jobs (XREADGROUP, XACK, DEL, XDEL, XTRIM)."""
    queue = queue_name()
    async with acl_user(redis_url, "producer", queue) as user:
        producer = role_app(queue, user)
        sent = tasks(producer)
        async with producer:
            job = await sent["add"].enqueue(1, 2)
            client = await producer.redis()
            dlq, stream = producer.keys.dlq, producer.keys.stream("default")
            denied = [
                lambda: DeadLetters(producer).purge(),
                lambda: DeadLetters(producer).count(),
                lambda: client.xadd(dlq, {"forged": "1"}, maxlen=0),
                lambda: client.set(dlq, "gone"),
                lambda: client.pexpire(dlq, 1),
                lambda: client.delete(dlq),
                lambda: client.xdel(stream, "0-1"),
                lambda: client.xtrim(stream, maxlen=0),
                lambda: client.delete(producer.keys.job(job.id)),
                lambda: client.xreadgroup(GROUP, "thief", {stream: ">"}),
                lambda: client.xack(stream, GROUP, "0-1"),
                lambda: client.hset(producer.keys.lock("janitor"), "x", "1"),
                lambda: client.get("streamq:{another-queue}:job:1"),
            ]
            for attempt in denied:
                with pytest.raises(NoPermissionError):
                    await attempt()
            assert await client.xlen(stream) == 1
        async with App(queue, redis_url=redis_url) as owner:
            await drop_queue(owner)


async def dashboard_pages(http: httpx.AsyncClient, queue: str, job_ids: list[str]) -> str:
    base = f"/q/{queue}"
    paths = [f"{base}/", f"{base}/?partial=1", f"{base}/workers", f"{base}/jobs",
             f"{base}/jobs?status=failed", f"{base}/dlq", f"{base}/delayed",
             f"{base}/schedules"]  # fmt: skip
    paths += [f"{base}/jobs/{job_id}" for job_id in job_ids]
    paths += [f"{base}/jobs/{job_ids[0]}/events"]
    dlq_page = ""
    for path in paths:
        page = await http.get(path)
        assert page.status_code == 200, (path, page.text[-2000:])
        if path.endswith("/dlq"):
            dlq_page = page.text
    entry, *_ = re.findall(r'data-entry-id="([^"]+)"', dlq_page)
    page = await http.get(f"{base}/dlq/{entry}")
    assert page.status_code == 200, page.text[-2000:]
    return entry


def http_client(asgi: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://testserver")


async def csrf(http: httpx.AsyncClient, path: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', (await http.get(path)).text)
    assert match, path
    return match[1]


async def test_dashboard_rules_render_every_page_and_only_the_full_one_acts(
    redis_url: str,
) -> None:
    """The read-only user renders every page of a read-only dashboard and can
    write nothing (not even through a script); the full dashboard user renders
    them too and runs every action: DLQ requeue and purge, cancel and run now
    of delayed jobs."""
    queue = queue_name()
    async with App(queue, redis_url=redis_url, settings=Settings(**FAST)) as owner:  # type: ignore[arg-type]
        sent = tasks(owner)
        done = await sent["add"].enqueue(1, 2)
        dead = await sent["doomed"].enqueue()
        dead2 = await sent["doomed"].enqueue()
        parked = [await sent["add"].enqueue_in(3600, i, i) for i in range(2)]
        async with running_worker(owner):
            assert await done.result(timeout=10) == 3
            assert await dead.wait(timeout=10) == JobStatus.FAILED
            assert await dead2.wait(timeout=10) == JobStatus.FAILED
        ids = [done.id, dead.id, parked[0].id]
        async with acl_user(redis_url, "dashboard-read-only", queue) as viewer:
            viewing = role_app(queue, viewer)
            async with viewing, http_client(create_dashboard(viewing, read_only=True)) as http:
                await dashboard_pages(http, queue, ids)
                assert await viewer.denials() == []
                client = await viewing.redis()
                for attempt in (
                    lambda: client.hset(viewing.keys.job(done.id), "status", "queued"),
                    lambda: client.delete(viewing.keys.dlq),
                    lambda: client.xadd(viewing.keys.stream("default"), {"x": "1"}),
                    lambda: DeadLetters(viewing).purge(),
                    lambda: viewing.job(parked[0].id).cancel(),
                    lambda: client.script_load("return 1"),
                ):
                    with pytest.raises(NoPermissionError):
                        await attempt()
        async with acl_user(redis_url, "dashboard", queue) as operator:
            operating = role_app(queue, operator)
            async with operating, http_client(create_dashboard(operating)) as http:
                entry = await dashboard_pages(http, queue, ids)
                base = f"/q/{queue}"
                token = await csrf(http, f"{base}/dlq")
                for path, form in (
                    ("dlq/requeue", {"entry": entry}),
                    ("dlq/purge", {"all": "1"}),
                    ("delayed/cancel", {"job": parked[0].id}),
                    ("delayed/run-now", {"job": parked[1].id}),
                ):
                    acted = await http.post(
                        f"{base}/{path}", data={**form, "csrf": token, "confirm": "1"}
                    )
                    assert acted.status_code == 303, (path, acted.text[-2000:])
                assert await DeadLetters(operating).count() == 0
                assert await parked[0].status() == JobStatus.CANCELLED
                assert await operator.denials() == []
        async with running_worker(owner):
            assert await parked[1].result(timeout=10) == 2
        await drop_queue(owner)


def test_the_cli_prints_the_rule_of_a_role(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["acl", "--role", "producer", "--queue", "emails", "--rule-only"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == acl.rule("producer", queue="emails")
    tokens = out.split()
    assert "~streamq:{emails}:stream:*" in tokens and "~streamq:{emails}:dlq" not in tokens
    assert "~streamq:{emails}:dlq" in acl.rule("producer-chains", queue="emails").split()
    assert not {"+xreadgroup", "+xack", "+del", "+xdel", "+xtrim", "+unlink"} & set(tokens)
    assert main(["acl", "--role", "dashboard-read-only", "--prefix", "jobs"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ACL SETUSER streamq-dashboard-read-only reset on >")
    assert line.endswith("%R~jobs:*") and "+xadd" not in line and "+evalsha" not in line


def test_an_unknown_role_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["acl", "--role", "admin"]) == 2
    assert (
        "role must be one of producer, producer-chains, worker, dashboard, dashboard-read-only"
        in (capsys.readouterr().err)
    )
