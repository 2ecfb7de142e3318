"""The live demo page in a real Chromium, on a real ``DemoPool`` (worker processes).

A hang is real here: the worker holding the job SIGSTOPs itself. The page is
driven through its own forms (configure, enqueue, reclaim now), and every
reading of the counters it ever renders is recorded by a script installed in
the page (``RECORDER``), so the balance is checked at every refresh the
browser showed, not only at the moments the test looks.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from streamq import App
from streamq.dashboard import create_dashboard
from streamq.demo_pool import DemoConfig, DemoPool
from tests.browser.harness import AsgiServers
from tests.conftest import drop_queue, queue_name

pytestmark = [pytest.mark.anyio, pytest.mark.browser]
Shoot = Callable[[Page, str], Awaitable[Path]]
COUNTERS = ("enqueued", "succeeded", "dead", "waiting", "in-flight", "reclaimed", "hung")
POSITIVE = re.compile(r"^[1-9]\d*$")

# Runs in every document of the context before the page's own scripts: records the
# counters as first rendered and after every live refresh, in sessionStorage (which
# survives the reloads that follow each form's POST/redirect/GET).
RECORDER = """
document.addEventListener("DOMContentLoaded", () => {
  const record = () => {
    const balance = document.querySelector('[data-testid="demo-balance"]');
    if (!balance) return;
    const reading = {balanced: balance.dataset.balanced, pids: []};
    for (const name of %s) {
      const el = document.querySelector(`[data-testid="demo-${name}"]`);
      reading[name] = parseInt(el.textContent, 10);
    }
    for (const w of document.querySelectorAll('[data-testid="demo-worker"]')) {
      const pid = /pid (\\d+)/.exec(w.textContent);
      if (pid) reading.pids.push(parseInt(pid[1], 10));
    }
    const all = JSON.parse(sessionStorage.getItem("readings") || "[]");
    all.push(reading);
    sessionStorage.setItem("readings", JSON.stringify(all));
  };
  record();
  const live = document.querySelector("[data-refresh]");
  if (live) live.addEventListener("refreshed", record);
});
""" % list(COUNTERS)  # noqa: UP031 (a JS template: braces everywhere)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@asynccontextmanager
async def demo_page(
    redis_url: str,
    serve_asgi: AsgiServers,
    page: Page,
    config: DemoConfig,
    queue: str | None = None,
) -> AsyncIterator[DemoPool]:
    """A DemoPool served with the dashboard, its page open on /demo with the recorder.

    ``queue``: a fixed name (for the screenshot; each test session runs its own
    valkey), emptied first. On the way out the page leaves /demo (so it stops
    polling) before the pool stops, the queue's keys are deleted, and no worker
    process survives.
    """
    if queue is not None:
        async with App(queue, redis_url=redis_url) as stale:
            await drop_queue(stale)
    pool = DemoPool(redis_url, queue=queue or queue_name(), config=config)
    seen: set[int] = set()
    try:
        async with pool:
            base = await serve_asgi(create_dashboard(pool.app, demo=pool))
            await page.add_init_script(RECORDER)
            await page.goto(base + "/")  # the home page of a demo dashboard is the demo
            await expect(page).to_have_url(base + "/demo")
            try:
                yield pool
            finally:
                seen.update(pool.pids)
                for reading in await readings(page):
                    seen.update(reading["pids"])
                await page.goto("about:blank")
                await pool.reset()
    finally:
        seen.update(pool.pids)
        survivors = [pid for pid in seen if alive(pid)]
        for pid in survivors:  # even on failure, no child outlives the test
            os.kill(pid, 9)
    assert pool.pids == []
    assert not survivors, f"worker processes left running: {survivors}"


async def readings(page: Page) -> list[dict[str, Any]]:
    raw = await page.evaluate("sessionStorage.getItem('readings')")
    return [] if raw is None else list(json.loads(raw))


async def assert_balanced_throughout(page: Page, at_least: int) -> list[dict[str, Any]]:
    """Every reading the page rendered balanced, by its own verdict and by the numbers."""
    seen = await readings(page)
    assert len(seen) >= at_least, f"only {len(seen)} readings of the counters"
    for r in seen:
        total = r["succeeded"] + r["dead"] + r["waiting"] + r["in-flight"]
        assert r["balanced"] == "true" and r["enqueued"] == total, r
    return seen


async def configure(page: Page, **fields: str) -> None:
    """Change the pool's settings through the page's form."""
    form = page.get_by_test_id("demo-configure-form")
    for name, value in fields.items():
        await form.locator(f'input[name="{name}"]').fill(value)
    await page.get_by_test_id("demo-configure").click()
    await expect(page.get_by_test_id("flash")).to_have_text("configured")


async def enqueue(page: Page, kind: str, priority: str, count: int) -> None:
    await page.get_by_test_id("demo-kind").select_option(kind)
    await page.get_by_test_id("demo-priority").select_option(priority)
    await page.get_by_test_id("demo-count").fill(str(count))
    await page.get_by_test_id("demo-enqueue").click()
    await expect(page.get_by_test_id("flash")).to_have_text(f"enqueued {count} {kind} job(s)")


def counter(page: Page, name: str) -> Any:
    return page.get_by_test_id(f"demo-{name}")


QUICK = DemoConfig(
    workers=2, latency_ms=50, failure_rate=0.0, hang_rate=0.0, visibility_timeout_s=1.0
)


async def test_hung_jobs_are_reclaimed_after_the_timeout_and_the_counters_balance(
    redis_url: str, serve_asgi: AsgiServers, page: Page, screenshot: Shoot
) -> None:
    """Two workers freeze holding their jobs (hang rate 1.0, set in the page); the
    page shows them hung, then the jobs reclaimed after the 1 s visibility timeout
    and every job succeeded; every reading the page rendered balanced."""
    async with demo_page(redis_url, serve_asgi, page, QUICK, queue="streamq-demo"):
        workers = page.get_by_test_id("demo-worker")
        await expect(workers.and_(page.locator('[data-state="running"]'))).to_have_count(2)
        await enqueue(page, "email", "high", 8)
        await expect(counter(page, "succeeded")).to_have_text("8")

        await configure(page, hang_rate="1")
        await expect(page.get_by_test_id("demo-hang-input")).to_have_value("1.0")
        await enqueue(page, "thumbnail", "default", 4)
        await expect(counter(page, "hung")).to_have_text("2")  # both workers froze
        await expect(workers.and_(page.locator('[data-state="hung"]'))).to_have_count(2)
        await expect(counter(page, "in-flight")).to_have_text("2")  # held, not lost
        await expect(page.get_by_test_id("demo-balance")).to_have_attribute("data-balanced", "true")
        await screenshot(page, "demo")
        overflowing = await page.eval_on_selector_all(
            ".lane", "lanes => lanes.filter(l => l.scrollWidth > l.clientWidth).length"
        )
        assert overflowing == 0  # long job ids wrap inside their lane

        await configure(page, hang_rate="0")  # the reclaimed attempts must not hang again
        await expect(counter(page, "succeeded")).to_have_text("12", timeout=20_000)
        await expect(counter(page, "reclaimed")).to_have_text(POSITIVE)
        reclaimed = page.get_by_test_id("demo-jobs-reclaimed").get_by_test_id("demo-job")
        await expect(reclaimed.first).to_contain_text("thumbnail")
        for name, value in (("waiting", "0"), ("in-flight", "0"), ("dead", "0")):
            await expect(counter(page, name)).to_have_text(value)
        # The frozen processes were killed and replaced: the pool keeps its size.
        await expect(workers.and_(page.locator('[data-state="running"]'))).to_have_count(2)
        seen = await assert_balanced_throughout(page, at_least=5)
        assert any(r["hung"] > 0 and r["in-flight"] > 0 for r in seen)  # balanced while held
        assert seen[-1]["succeeded"] == 12


async def test_reclaim_now_hands_a_hung_job_over_at_once(
    redis_url: str, serve_asgi: AsgiServers, page: Page
) -> None:
    """With a one-minute visibility timeout, "reclaim now" in the page hands the
    hung worker's job to a fresh worker, which runs it to success."""
    slow = DemoConfig(
        workers=1, latency_ms=50, failure_rate=0.0, hang_rate=1.0, visibility_timeout_s=60.0
    )
    async with demo_page(redis_url, serve_asgi, page, slow):
        await enqueue(page, "invoice", "low", 1)
        hung = page.locator('[data-testid="demo-worker"][data-state="hung"]')
        await expect(hung).to_have_count(1)
        hung_pid = int(re.findall(r"pid (\d+)", await hung.inner_text())[0])
        await configure(page, hang_rate="0")
        await expect(counter(page, "in-flight")).to_have_text("1")

        await page.get_by_test_id("demo-reclaim").click()
        await expect(page.get_by_test_id("flash")).to_have_text("reclaimed 1 job(s)")
        await expect(counter(page, "succeeded")).to_have_text("1")
        await expect(counter(page, "reclaimed")).to_have_text("1")
        await expect(hung).to_have_count(0)
        assert not alive(hung_pid)  # killed, so it can never wake up and write
        await assert_balanced_throughout(page, at_least=3)
