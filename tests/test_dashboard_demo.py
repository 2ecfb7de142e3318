"""The dashboard's demo page, driven through a fake DemoControl (our own interface).

The fake stands in for the demo pool only: what the page renders and which
control each form calls. The pool's Redis behaviour is tested with the pool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import httpx
import pytest

from streamq import App
from streamq.dashboard import create_dashboard
from streamq.demo_pool import (
    KINDS,
    PRIORITIES,
    DemoConfig,
    DemoCounters,
    DemoJob,
    DemoSnapshot,
    DemoWorker,
)

pytestmark = pytest.mark.anyio


@dataclass
class FakeDemo:
    kinds: tuple[str, ...] = KINDS
    priorities: tuple[str, ...] = PRIORITIES
    config: DemoConfig = field(default_factory=DemoConfig)
    enqueued: list[tuple[str, int, str]] = field(default_factory=list)
    reclaims: int = 0
    resets: int = 0
    lost: int = 0
    """Jobs the counters leave out (to see the page say it does not balance)."""

    async def snapshot(self) -> DemoSnapshot:
        total = sum(n for _, n, _ in self.enqueued)
        counters = DemoCounters(
            enqueued=total, waiting=0, in_flight=1 if total else 0,
            succeeded=max(0, total - 2 - self.lost) if total else 0, dead=1 if total else 0,
            retried=3, reclaimed=self.reclaims, hung=1,
        )  # fmt: skip
        jobs = {
            "running": [DemoJob("j1", "<b>email</b>", "high", "running", 1, "w1", 0.5)],
            "reclaimed": [DemoJob("j2", "webhook", "default", "reclaimed", 2, None, 3.0)],
        }
        workers = [DemoWorker("w1", 101, "running", 1), DemoWorker("w2", 102, "hung", 1)]
        return DemoSnapshot(self.config, counters, workers, jobs)  # type: ignore[arg-type]

    async def configure(self, config: DemoConfig) -> None:
        self.config = config

    async def enqueue(self, kind: str, count: int, priority: str) -> int:
        self.enqueued.append((kind, count, priority))
        return count

    async def reclaim_now(self) -> int:
        self.reclaims += 1
        return 1

    async def reset(self) -> None:
        self.resets += 1


async def test_demo_page_shows_balanced_counters_and_its_forms_drive_the_demo(app: App) -> None:
    demo = FakeDemo()
    asgi = create_dashboard(app, demo=demo)
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        page = await http.get("/demo")
        assert page.status_code == 200
        assert 'data-interval="800"' in page.text
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token
        csrf = token[1]
        assert (
            await http.post(
                "/demo/enqueue", data={"kind": "email", "count": "5", "priority": "high"}
            )
        ).status_code == 403
        done = await http.post(
            "/demo/enqueue",
            data={"kind": "email", "count": "5", "priority": "high", "csrf": csrf},
        )
        assert done.status_code == 303 and demo.enqueued == [("email", 5, "high")]
        live = (await http.get("/demo", params={"partial": 1})).text
        assert 'data-testid="demo-enqueued">5<' in live
        assert 'data-balanced="true"' in live
        assert 'data-testid="demo-worker" data-state="hung"' in live
        assert "&lt;b&gt;email&lt;/b&gt;" in live and "<b>email</b>" not in live
        configured = await http.post(
            "/demo/configure",
            data={"workers": "5", "latency_ms": "100", "failure_rate": "0.2",
                  "hang_rate": "0.1", "visibility_timeout_s": "2", "csrf": csrf},
        )  # fmt: skip
        assert configured.status_code == 303
        assert demo.config == DemoConfig(5, 100, 0.2, 0.1, 2.0)
        bad = await http.post(
            "/demo/configure",
            data={"workers": "99", "latency_ms": "100", "failure_rate": "0.2",
                  "hang_rate": "0.1", "visibility_timeout_s": "2", "csrf": csrf},
        )  # fmt: skip
        assert bad.status_code == 400 and demo.config.workers == 5
        assert (await http.post("/demo/reclaim", data={"csrf": csrf})).status_code == 303
        assert (await http.post("/demo/reset", data={"csrf": csrf})).status_code == 303
        assert demo.reclaims == 1 and demo.resets == 1
        demo.lost = 1
        live = (await http.get("/demo", params={"partial": 1})).text
        assert 'data-balanced="false"' in live


async def test_no_demo_page_without_a_demo(app: App) -> None:
    transport = httpx.ASGITransport(app=create_dashboard(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/demo")).status_code == 404
        assert 'data-testid="demo-link"' not in (await http.get(f"/q/{app.name}/")).text
