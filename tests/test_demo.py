"""The demo: strict priority order, every job accounted for, nothing left behind.

``run_demo`` is tested in-process against the session server; ``python -m
streamq demo`` as a child process on the embedded server (no URL configured),
as a newcomer would first run it.
"""

from __future__ import annotations

import os

import pytest
import redis.asyncio

from streamq import embedded
from streamq.demo import PRIORITIES, run_demo
from tests.apps.process import streamq_child, valkey_pids_serving

pytestmark = pytest.mark.anyio

DEMO_KEYS = "streamq:{demo-*"


async def demo_keys(redis_url: str) -> set[bytes]:
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        return {key async for key in client.scan_iter(match=DEMO_KEYS, count=1000)}


async def test_run_demo_reports_strict_priority_and_accounts_for_every_job(
    redis_url: str,
) -> None:
    """Every high job starts before any default one, and every default before any low.

    Ten jobs per priority include one that fails on purpose (n == 7) in each:
    it is retried once and then fails for good, so 27 succeed and 3 fail, and
    enqueued == succeeded + failed. The demo deletes its queue's keys at the
    end: no key of a demo queue is added to the server. The order depends on
    how fetches and outcomes interleave, so the demo runs three times (about
    0.1 s each) and every run must report strict order.
    """
    before = await demo_keys(redis_url)
    for _ in range(3):
        report = await run_demo(jobs_per_priority=10, concurrency=4, redis_url=redis_url)
        assert report.enqueued == 10 * len(PRIORITIES)
        assert report.enqueued == report.succeeded + report.failed
        assert (report.succeeded, report.failed, report.retried) == (27, 3, 3)
        assert report.strict_order, f"start order: {' '.join(report.start_order)}"
        assert set(report.positions()) == set(PRIORITIES)
        assert await demo_keys(redis_url) == before


async def test_demo_command_on_the_embedded_server_exits_clean() -> None:
    """``python -m streamq demo`` with no URL starts, uses and stops the embedded server.

    It exits 0 and prints the summary with strict priority order "yes";
    afterwards nothing answers on the data dir's socket and no valkey-server
    process serving that dir is left. Without the owner stopping its server,
    every demo run would leave one running.
    """
    home = embedded.data_dir()
    socket = embedded.socket_path(home)
    env = {k: v for k, v in os.environ.items() if k != "STREAMQ_REDIS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    try:
        async with streamq_child(["demo", "--jobs", "5"], env) as child:
            code = await child.wait(timeout_s=60)
        assert code == 0, child.output()
        out = "\n".join(child.stdout)
        (line,) = [line for line in out.splitlines() if "strict priority order" in line]
        assert "yes" in line.split("strict priority order")[1], out
        assert socket.parent == home, "socket fell back to /tmp: the check below would miss it"
        assert not embedded.ping(socket)
        assert valkey_pids_serving(home) == []
    finally:
        if embedded.ping(socket):
            async with redis.asyncio.Redis(unix_socket_path=str(socket)) as client:
                await client.shutdown(nosave=True)
