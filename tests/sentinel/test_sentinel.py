"""A ``redis+sentinel://`` URL: the App finds the master through the sentinels, and
durable enqueues wait for the replica (real processes on 127.0.0.1)."""

from __future__ import annotations

import json
import sys
import types

import anyio
import pytest
from typer.testing import CliRunner, Result

from streamq import App, NotDurable, ServerUnavailable, Settings
from streamq.cli import cli
from streamq.doctor import Status, run_checks
from streamq.testing import delete_prefix, unique_prefix
from tests.conftest import (
    assert_no_key_leak,
    drop_queue,
    queue_name,
    running_worker,
    wait_until,
)
from tests.sentinel.server import SERVICE, SentinelDeployment
from tests.servers import free_port

pytestmark = pytest.mark.anyio


async def test_an_app_on_a_sentinel_url_enqueues_and_runs_a_job(
    sentinels: SentinelDeployment,
) -> None:
    app = App(queue_name(), redis_url=sentinels.url)

    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    async with app, running_worker(app):
        job = await add.enqueue(2, 3)
        assert await job.result(timeout=10) == 5
        # The client talks to the master the sentinels name, nowhere else.
        info = await (await app.node_redis()).info("server")
        assert int(info["tcp_port"]) == sentinels.master_port()
        await assert_no_key_leak(app)
        await drop_queue(app)


async def test_no_sentinel_answering_names_every_sentinel_tried() -> None:
    ports = [free_port(), free_port()]
    url = f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/{SERVICE}"
    with pytest.raises(ServerUnavailable) as caught:
        async with App(queue_name(), redis_url=url):
            pass
    message = str(caught.value)
    assert f"127.0.0.1:{ports[0]}: connection refused" in message
    assert f"127.0.0.1:{ports[1]}: connection refused" in message
    assert "tried 2 sentinels" in message and repr(SERVICE) in message


async def test_a_service_the_sentinels_do_not_watch_is_refused_with_their_answer(
    sentinels: SentinelDeployment,
) -> None:
    url = sentinels.url.replace(f"/{SERVICE}", "/elsewhere")
    with pytest.raises(ServerUnavailable, match="No such master with that name"):
        async with App(queue_name(), redis_url=url):
            pass


async def test_doctor_names_the_master_and_replicas_and_what_durable_lacks(
    sentinels: SentinelDeployment,
) -> None:
    settings = Settings(redis_url=sentinels.url, durable=True)
    async with App(queue_name(), settings=settings) as app:
        checks = {check.name: check for check in await run_checks(app)}
    found = checks["sentinel"]
    assert found.status is Status.OK, found
    assert f"master 127.0.0.1:{sentinels.master.port}" in found.detail
    assert f"127.0.0.1:{sentinels.replicas[0].port} (up" in found.detail
    assert "3 of the URL's 3 sentinels answered" in found.detail
    durable = checks["durable"]
    assert durable.status is Status.WARN, durable  # min-replicas-to-write is 0 here
    assert "1 replica online, 1 wanted" in durable.detail
    assert "WAITAOF 1 0" in durable.detail
    assert "min-replicas-to-write" in durable.fix


async def test_durable_enqueues_wait_for_the_replica_and_raise_without_it(
    own_sentinels: SentinelDeployment,
) -> None:
    settings = Settings(redis_url=own_sentinels.url, durable=True, durable_timeout_s=0.3)
    async with App(queue_name(), settings=settings) as app:

        @app.task(name="noop")
        async def noop(n: int) -> None:
            return None

        await noop.enqueue(1)
        assert len(await noop.enqueue_many([(n,) for n in range(250)])) == 250  # 3 calls
        redis = await app.node_redis()
        stream = app.keys.stream(noop.options.priority)
        assert await redis.xlen(stream) == 251

        own_sentinels.replicas[0].kill()
        with pytest.raises(NotDurable) as caught:
            await noop.enqueue(2)
        error = caught.value
        assert (error.replicas, error.wanted) == (0, 1)
        assert "IS in the queue" in str(error)
        # Not rolled back: the job is in the stream, and its hash says queued.
        (job_id,) = error.job_ids
        assert await redis.xlen(stream) == 252
        assert await redis.hget(app.keys.job(job_id), "status") == b"queued"
        # A call site may opt out.
        await noop.with_options(durable=False).enqueue(3)
        checks = {check.name: check for check in await run_checks(app)}
        assert checks["durable"].status is Status.PROBLEM
        assert "0 replicas online, 1 wanted" in checks["durable"].detail

        async def sentinels_see_it_down() -> bool:
            checks = {check.name: check for check in await run_checks(app)}
            return "no replica is up" in checks["sentinel"].detail

        # down-after-milliseconds is 500 ms: then the sentinels say so, and doctor.
        await wait_until(sentinels_see_it_down, 5, "doctor to say no replica is up")
        await drop_queue(app)


async def test_the_cli_and_the_testing_helpers_take_a_sentinel_url(
    sentinels: SentinelDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = queue_name()
    # A module of its own: the CLI points the App it loads at the URL it is given.
    module = types.ModuleType(f"streamq_cli_sentinel_{queue}")
    module.app = App(queue)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    runner = CliRunner()

    def doctor() -> Result:
        args = ["doctor", f"{module.__name__}:app", "--redis-url", sentinels.url, "--json"]
        return runner.invoke(cli, args)

    result = await anyio.to_thread.run_sync(doctor)
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["sentinel"]["status"] == "ok", checks["sentinel"]
    assert f"master 127.0.0.1:{sentinels.master.port}" in checks["sentinel"]["detail"]
    assert checks["version"]["status"] == "ok"

    prefix = unique_prefix()
    async with App(queue, redis_url=sentinels.url, prefix=prefix) as app:
        await (await app.redis()).set(app.keys.lock("x"), 1)
    assert delete_prefix(sentinels.url, prefix) == 1  # on the master the sentinels name
