"""`streamq demo --web`: one command serves the live demo with its worker pool."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import httpx
import pytest

from tests.apps.process import streamq_child
from tests.conftest import queue_name, subprocess_env
from tests.servers import free_port

pytestmark = pytest.mark.anyio


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def test_demo_web_serves_the_live_demo_and_stops_its_workers(redis_url: str) -> None:
    port = free_port()
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=queue_name())
    async with streamq_child(["demo", "--web", "--port", str(port)], env) as child:
        page = None
        with anyio.fail_after(30):
            async with httpx.AsyncClient(follow_redirects=True, timeout=2) as client:
                while page is None:
                    try:
                        page = await client.get(f"http://127.0.0.1:{port}/")
                    except httpx.TransportError:
                        assert child.process.returncode is None, child.output()
                        await anyio.sleep(0.05)
        assert page.status_code == 200 and 'data-testid="demo-balance"' in page.text
        assert str(page.url).endswith("/demo")
        workers = _children_of(child.pid)
        assert len(workers) == 3, workers  # the default pool
        child.signal(signal.SIGINT)
        assert await child.wait(20) == 0, child.output()
    assert _alive(workers) == []


async def test_demo_web_refuses_a_public_address_without_auth(redis_url: str) -> None:
    env = subprocess_env(redis_url)
    async with streamq_child(["demo", "--web", "--host", "0.0.0.0"], env) as child:
        assert await child.wait(20) == 2
    assert len(child.stderr) == 1 and "without --auth" in child.stderr[0], child.output()
