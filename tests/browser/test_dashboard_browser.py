"""The dashboard in a real Chromium: live refresh, a DLQ requeue clicked through,
escaping, CSRF, the public-bind refusal, and a screenshot of every page.

Each test serves ``create_dashboard`` with uvicorn (``serve_asgi``) on a real
valkey queue (``app``) and drives the page as an operator would: clicks,
fills, and auto-waiting ``expect`` (no sleeps). ``app`` comes first in every
signature so that its teardown (closing the App) runs after the page and the
server have stopped: a page still refreshing must never reach a closed App.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Locator, Page, expect

import streamq
from streamq import App, JobStatus
from streamq.dashboard import create_dashboard
from streamq.dlq import DeadLetters
from tests.apps.process import streamq_child
from tests.browser.harness import XSS_PAYLOAD, AsgiServers, PageErrors
from tests.conftest import (
    assert_no_key_leak,
    drop_queue,
    queue_name,
    running_worker,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.anyio
browser = pytest.mark.browser
Shoot = Callable[[Page, str], Awaitable[Path]]


@pytest.fixture
async def shop(redis_url: str) -> AsyncIterator[App]:
    """The screenshots' queue, with a readable name (each test session runs its own valkey)."""
    application = App("shop", redis_url=redis_url)
    async with application:
        await drop_queue(application)
        yield application
        await assert_no_key_leak(application)
        await drop_queue(application)


def priority_row(page: Page, priority: str) -> Locator:
    return page.locator(f'[data-testid="prio-row"][data-priority="{priority}"]')


@browser
async def test_overview_updates_live_when_jobs_are_enqueued(
    app: App, serve_asgi: AsgiServers, page: Page
) -> None:
    """Jobs enqueued behind the page's back show in its counters without a reload,
    and so does a worker draining them."""

    @app.task(name="resize", priority="low")
    async def resize(n: int) -> int:
        return n

    base = await serve_asgi(create_dashboard(app))
    await page.goto(f"{base}/q/{app.name}/")
    low = priority_row(page, "low")
    await expect(page.get_by_test_id("pending-total")).to_have_text("0")
    await expect(page.get_by_test_id("delayed-count")).to_have_text("0")
    await page.evaluate("window.__sameDocument = true")  # a reload would wipe it

    await resize.enqueue_many([(n,) for n in range(7)])
    later = await resize.enqueue_in(3600, 99)
    await expect(low.get_by_test_id("depth")).to_have_text("7")
    await expect(page.get_by_test_id("delayed-count")).to_have_text("1")

    async with running_worker(app):
        await expect(low.get_by_test_id("depth")).to_have_text("0")
        await expect(page.get_by_text("Finished jobs: 7,")).to_be_visible()
    assert await page.evaluate("window.__sameDocument") is True
    await later.cancel()


@browser
async def test_dlq_requeue_clicked_through_runs_the_job_again(
    app: App, serve_asgi: AsgiServers, page: Page
) -> None:
    """A job dead for good is requeued from the DLQ page (button, confirmation,
    flash); a running worker runs it again, and its page shows it succeed."""
    fixed = False

    @app.task(name="charge", max_retries=0)
    async def charge(order: int) -> str:
        if not fixed:
            raise RuntimeError(f"card declined for order {order}")
        return f"charged {order}"

    job = await charge.enqueue(42)
    base = await serve_asgi(create_dashboard(app))
    async with running_worker(app):
        assert await job.wait(timeout=10) == JobStatus.FAILED
        await page.goto(f"{base}/q/{app.name}/dlq")
        row = page.locator(f'[data-testid="dlq-row"][data-job-id="{job.id}"]')
        await expect(row.get_by_test_id("dlq-error")).to_contain_text("card declined for order 42")

        fixed = True  # the bug behind the failure is fixed; now the operator requeues
        await row.get_by_test_id("dlq-requeue").click()
        await expect(page.get_by_test_id("confirm-question")).to_contain_text("Requeue DLQ entry")
        assert await DeadLetters(app).count() == 1  # asking changed nothing
        await page.get_by_test_id("confirm").click()
        await expect(page.get_by_test_id("flash")).to_have_text(f"requeued job {job.id}")
        await expect(page.get_by_test_id("dlq-row")).to_have_count(0)

        await page.goto(f"{base}/q/{app.name}/jobs/{job.id}")
        await expect(page.get_by_test_id("job-status")).to_have_text("succeeded")
        await expect(page.get_by_test_id("job-result")).to_have_text('"charged 42"')
    assert await job.result(timeout=1) == "charged 42"
    assert await DeadLetters(app).count() == 0


@browser
async def test_script_in_job_data_renders_as_text(
    app: App, serve_asgi: AsgiServers, page: Page
) -> None:
    """A payload in a job's id, argument, result and error is shown as text on the
    jobs list, the job pages and the DLQ, and never runs."""

    @app.task(name="echo")
    async def echo(text: str) -> str:
        return text

    @app.task(name="explode", max_retries=0)
    async def explode(text: str) -> None:
        raise ValueError(text)

    ok = await echo.with_options(job_id="x" + XSS_PAYLOAD).enqueue(XSS_PAYLOAD)
    bad = await explode.enqueue(XSS_PAYLOAD)
    async with running_worker(app):
        assert await ok.result(timeout=10) == XSS_PAYLOAD
        assert await bad.wait(timeout=10) == JobStatus.FAILED
    base = await serve_asgi(create_dashboard(app))

    await page.goto(f"{base}/q/{app.name}/jobs")
    row = page.get_by_test_id("job-row").filter(has_text="echo")
    await expect(row.get_by_role("link")).to_have_text("x" + XSS_PAYLOAD)
    await row.get_by_role("link").click()  # the link built from that id must work too
    await expect(page.get_by_test_id("job-id")).to_have_text("x" + XSS_PAYLOAD)
    await expect(page.get_by_test_id("job-arguments")).to_contain_text("window.__xss")
    await expect(page.get_by_test_id("job-result")).to_contain_text("<img src=")
    await _assert_inert(page)

    await page.goto(f"{base}/q/{app.name}/jobs/{bad.id}")
    await expect(page.get_by_test_id("job-error")).to_have_text(f"ValueError: {XSS_PAYLOAD}")
    await _assert_inert(page)

    await page.goto(f"{base}/q/{app.name}/dlq")
    await expect(page.get_by_test_id("dlq-error")).to_contain_text("<script>window.__xss")
    await _assert_inert(page)
    # The live fragment is swapped in through innerHTML, where only the onerror would run.
    await page.wait_for_function("document.querySelector('[data-refresh]') !== null")
    await page.locator("[data-refresh]").evaluate(
        "el => new Promise(done => el.addEventListener('refreshed', done, {once: true}))"
    )
    await _assert_inert(page)


async def _assert_inert(page: Page) -> None:
    assert await page.locator("main script, main img").count() == 0
    assert await page.evaluate("window.__xss") is None


@browser
async def test_a_post_without_the_csrf_token_is_refused(
    app: App, serve_asgi: AsgiServers, page: Page, page_errors: PageErrors
) -> None:
    """The page's own script POSTs a confirmed requeue without the token, then with a
    wrong one: both 403, the entry stays; with the page's token the request is taken."""

    @app.task(name="doomed", max_retries=0)
    async def doomed() -> None:
        raise RuntimeError("always")

    job = await doomed.enqueue()
    async with running_worker(app):
        assert await job.wait(timeout=10) == JobStatus.FAILED
    (letter,) = await DeadLetters(app).entries()
    base = await serve_asgi(create_dashboard(app))
    await page.goto(f"{base}/q/{app.name}/dlq")
    row = page.locator(f'[data-testid="dlq-row"][data-entry-id="{letter.id}"]')
    await expect(row).to_be_visible()
    post = """async ([url, body]) => {
        const r = await fetch(url, {method: "POST", body: new URLSearchParams(body),
                                    credentials: "same-origin", redirect: "manual"});
        return [r.status, await r.text()];
    }"""
    url = f"/q/{app.name}/dlq/requeue"
    status, text = await page.evaluate(post, [url, {"entry": letter.id, "confirm": "1"}])
    assert (status, text) == (403, "CSRF token missing or wrong: reload the page\n")
    forged = {"entry": letter.id, "confirm": "1", "csrf": "x" * 43}
    assert (await page.evaluate(post, [url, forged]))[0] == 403
    refusals = [m for m in page_errors.take() if "status of 403" in m]
    assert len(refusals) == 2  # the browser logs each refused request; claimed, expected
    assert await DeadLetters(app).count() == 1
    await page.reload()
    await expect(row).to_be_visible()

    # The control: the token the page's forms carry is accepted (asking, not doing).
    token = await row.locator('input[name="csrf"]').first.input_value()
    status, text = await page.evaluate(post, [url, {"entry": letter.id, "csrf": token}])
    assert status == 200 and 'data-testid="confirm"' in text
    assert await DeadLetters(app).count() == 1


async def test_the_cli_refuses_a_public_bind_without_auth(redis_url: str) -> None:
    """``streamq dashboard --host 0.0.0.0`` without ``--auth`` exits 2 with one line."""
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=queue_name())
    async with streamq_child(["dashboard", "tests.apps.slow:app", "--host", "0.0.0.0"], env) as c:
        assert await c.wait(timeout_s=30) == 2, c.output()
        await wait_until(lambda: bool(c.stderr), 5, "the refusal on stderr")
    lines = [line for line in c.stderr if line.strip()]
    assert len(lines) == 1 and "--auth" in lines[0], c.output()


@browser
async def test_screenshots_of_every_page_with_realistic_data(
    shop: App, serve_asgi: AsgiServers, page: Page, screenshot: Shoot
) -> None:
    """Several priorities, successes and failures, a DLQ entry, a delayed job, a
    cron schedule, a rate limit and a job running with progress: each page shows
    them and is shot (docs/screenshots/ under ``make screenshots``). Then the
    delayed job is run now from its page, and the running job's page follows it
    to success."""
    app = shop
    release = anyio.Event()
    running = anyio.Event()

    @app.task(name="emails.send", priority="high")
    async def send_email(to: str) -> str:
        return f"sent to {to}"

    @app.task(name="images.thumbnail")
    async def thumbnail(path: str, size: int = 256) -> dict[str, object]:
        return {"path": path, "size": size}

    @app.task(name="reports.build", priority="low", max_retries=0)
    async def build_report(month: str) -> None:
        await streamq.progress(40, f"building {month}: 4 of 10 sections")
        running.set()
        await release.wait()

    @app.task(name="payments.charge", max_retries=0, limit=streamq.Limit(rate="10/s"))
    async def charge(order: int) -> None:
        raise RuntimeError(f"card declined for order {order}")

    @app.cron("0 6 * * *", name="reports.daily")
    async def daily() -> None:
        return None

    for n in range(6):
        await send_email.enqueue(f"user{n}@example.com")
    for n in range(4):
        await thumbnail.enqueue(f"/photos/{n}.jpg")
    failing = [await charge.enqueue(order) for order in (1041, 1042)]
    async with running_worker(app, grace_s=1.0):
        try:
            for job in failing:
                assert await job.wait(timeout=10) == JobStatus.FAILED
            await wait_until(_drained(app), 10, "the quick jobs done")
            report = await build_report.enqueue("2026-01")
            with anyio.fail_after(10):
                await running.wait()
            # Waiting work on two priorities while the worker is busy: enqueued now.
            later = await thumbnail.enqueue_in(1800, "/photos/later.jpg", size=1024)
            base = await serve_asgi(create_dashboard(app))
            q = f"{base}/q/{app.name}"

            await page.goto(f"{q}/")
            await expect(page.get_by_test_id("dlq-count")).to_have_text("2")
            await expect(page.get_by_test_id("delayed-count")).to_have_text("1")
            await expect(priority_row(page, "low").get_by_test_id("pending")).to_have_text("1")
            # Failures in a single minute still draw the failure rate (a one-point line would not).
            await expect(
                page.get_by_test_id("failure-chart").locator("circle").first
            ).to_be_visible()
            await screenshot(page, "overview")

            await page.goto(f"{q}/workers")
            await expect(page.get_by_test_id("worker-row")).to_contain_text("reports.build")
            await screenshot(page, "workers")

            await page.goto(f"{q}/jobs")
            await expect(page.get_by_test_id("job-row")).to_have_count(14)
            await screenshot(page, "jobs")

            await page.goto(f"{q}/jobs/{report.id}")
            await expect(page.get_by_test_id("job-status")).to_have_text("running")
            await expect(page.get_by_test_id("job-progress")).to_contain_text("40 %")
            await screenshot(page, "job")

            await page.goto(f"{q}/dlq")
            await expect(page.get_by_test_id("dlq-row")).to_have_count(2)
            await screenshot(page, "dlq")

            await page.goto(f"{q}/delayed")
            await expect(page.get_by_test_id("delayed-row")).to_have_count(1)
            await screenshot(page, "delayed")

            await page.goto(f"{q}/schedules")
            await expect(page.get_by_test_id("schedule-row")).to_contain_text("cron 0 6 * * *")
            await expect(page.get_by_test_id("limit-row")).to_contain_text("payments.charge")
            await screenshot(page, "schedules")

            # Run the delayed job now, clicked through; the worker runs it at once.
            await page.goto(f"{q}/delayed")
            await page.get_by_test_id("delayed-run-now").click()
            await expect(page.get_by_test_id("confirm-question")).to_contain_text("Run job")
            await page.get_by_test_id("confirm").click()
            await expect(page.get_by_test_id("flash")).to_have_text(
                f"job {later.id} queued to run now"
            )
            await expect(page.get_by_test_id("delayed-row")).to_have_count(0)
            assert await later.result(timeout=10) == {"path": "/photos/later.jpg", "size": 1024}

            # The running job's page follows it to the end, live.
            await page.goto(f"{q}/jobs/{report.id}")
            await expect(page.get_by_test_id("job-progress")).to_contain_text("40 %")
            release.set()
            await expect(page.get_by_test_id("job-status")).to_have_text("succeeded")

        finally:
            release.set()  # a failure above must not leave the worker waiting


def _drained(app: App) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        redis = await app.redis()
        for stream in app.streams:
            groups = await redis.xinfo_groups(stream)
            if any(g["lag"] or g["pending"] for g in groups):
                return False
        return True

    return check
