"""The web dashboard against a real server: pages, escaping, CSRF, auth, read-only, mounting."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from streamq import App, JobStatus
from streamq.cli import main
from streamq.dashboard import create_dashboard
from streamq.dlq import DeadLetters
from streamq.errors import ConfigError
from tests.conftest import drop_queue, queue_name, running_worker

pytestmark = pytest.mark.anyio
SCRIPT = "<script>alert('x')</script>"


def client(asgi: Any, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi), base_url="http://testserver", **kwargs
    )


async def csrf_of(http: httpx.AsyncClient, path: str) -> str:
    """The CSRF token a page's forms carry (the client keeps the cookie)."""
    page = await http.get(path)
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, "no form with a CSRF field on " + path
    return match[1]


@pytest.fixture
async def dashboard_client(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with client(create_dashboard(app)) as http:
        yield http


async def test_every_page_renders_real_data_and_escapes_job_data(app: App) -> None:
    """Given a succeeded job whose argument is a <script>, a dead one whose error is,
    and a delayed one, every page shows them, and the markup only ever as text."""

    @app.task(name="greet")
    async def greet(name: str) -> str:
        return f"hi {name}"

    @app.task(name="explode", max_retries=0)
    async def explode(text: str) -> None:
        raise ValueError(text)

    ok = await greet.enqueue(SCRIPT)
    bad = await explode.enqueue(SCRIPT)
    later = await greet.enqueue_in(3600, "later")
    async with running_worker(app):
        assert await ok.result(timeout=10) == f"hi {SCRIPT}"
        assert await bad.wait(timeout=10) == JobStatus.FAILED
        async with client(create_dashboard(app)) as http:
            workers = await http.get(f"/q/{app.name}/workers")
            assert workers.status_code == 200 and 'data-testid="worker-row"' in workers.text
        (letter,) = await DeadLetters(app).entries()
    base = f"/q/{app.name}"
    async with client(create_dashboard(app)) as http:
        pages = {
            "overview": await http.get(f"{base}/"),
            "jobs": await http.get(f"{base}/jobs"),
            "job": await http.get(f"{base}/jobs/{ok.id}"),
            "failed job": await http.get(f"{base}/jobs/{bad.id}"),
            "dlq": await http.get(f"{base}/dlq"),
            "dlq entry": await http.get(f"{base}/dlq/{letter.id}"),
            "delayed": await http.get(f"{base}/delayed"),
            "schedules": await http.get(f"{base}/schedules"),
            "partial": await http.get(f"{base}/", params={"partial": 1}),
        }
        for name, page in pages.items():
            assert page.status_code == 200, (name, page.text)
            assert "<script>alert" not in page.text, name
        assert 'data-testid="dlq-count">1<' in pages["overview"].text
        assert 'data-testid="delayed-count">1<' in pages["overview"].text
        assert 'data-testid="throughput-chart"' in pages["overview"].text
        assert (
            "<html" not in pages["partial"].text
            and 'data-testid="prio-row"' in pages["partial"].text
        )
        for job in (ok, bad, later):
            assert f'data-job-id="{job.id}"' in pages["jobs"].text
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in pages["job"].text
        assert 'data-testid="job-status" class="status-succeeded">succeeded' in pages["job"].text
        assert 'data-testid="job-traceback"' in pages["failed job"].text
        assert "raise ValueError" in pages["failed job"].text
        assert f'data-entry-id="{letter.id}"' in pages["dlq"].text
        assert "&lt;script&gt;" in pages["dlq entry"].text
        assert f'data-job-id="{later.id}"' in pages["delayed"].text
        story = pages["job"].text
        assert 'data-kind="enqueued"' in story and 'data-kind="succeeded"' in story
        searched = await http.get(f"{base}/jobs", params={"status": "failed"})
        assert f'data-job-id="{bad.id}"' in searched.text and ok.id not in searched.text
        by_task = await http.get(f"{base}/jobs", params={"task": "explode"})
        assert bad.id in by_task.text and ok.id not in by_task.text
        by_id = await http.get(f"{base}/jobs", params={"id": ok.id})
        assert by_id.status_code == 303 and by_id.headers["location"].endswith(f"/jobs/{ok.id}")
        missing = await http.get(f"{base}/jobs/no-such-job")
        assert missing.status_code == 404
        events = await http.get(f"{base}/jobs/{ok.id}/events")
        assert "event: final" in events.text and '"succeeded"' in events.text
    await later.cancel()


async def test_post_without_csrf_is_refused_and_with_it_the_dlq_requeue_runs_the_job(
    app: App,
) -> None:
    """A requeue POST lacking the CSRF token (or with a wrong one) is 403 and changes
    nothing; the page's own token, confirmed, brings the job back and it succeeds."""
    fixed = False

    @app.task(name="flaky", max_retries=0)
    async def flaky() -> str:
        if not fixed:
            raise RuntimeError("not yet")
        return "fixed"

    job = await flaky.enqueue()
    dlq = DeadLetters(app)
    async with running_worker(app), client(create_dashboard(app)) as http:
        assert await job.wait(timeout=10) == JobStatus.FAILED
        (letter,) = await dlq.entries()
        url = f"/q/{app.name}/dlq/requeue"
        refused = await http.post(url, data={"entry": letter.id, "confirm": "1"})
        assert refused.status_code == 403
        token = await csrf_of(http, f"/q/{app.name}/dlq")
        wrong = await http.post(url, data={"entry": letter.id, "confirm": "1", "csrf": "x" * 43})
        assert wrong.status_code == 403
        assert await dlq.count() == 1
        asked = await http.post(url, data={"entry": letter.id, "csrf": token})
        assert asked.status_code == 200 and 'data-testid="confirm"' in asked.text
        assert await dlq.count() == 1  # the confirmation page changed nothing
        fixed = True
        done = await http.post(url, data={"entry": letter.id, "csrf": token, "confirm": "1"})
        assert done.status_code == 303 and "requeued" in done.headers["location"]
        assert await job.result(timeout=10) == "fixed"
        assert await dlq.count() == 0


async def test_dlq_purge_all_of_a_task(app: App) -> None:
    @app.task(name="a", max_retries=0)
    async def a() -> None:
        raise RuntimeError("a")

    @app.task(name="b", max_retries=0)
    async def b() -> None:
        raise RuntimeError("b")

    jobs = [await a.enqueue(), await a.enqueue(), await b.enqueue()]
    async with running_worker(app), client(create_dashboard(app)) as http:
        for job in jobs:
            await job.wait(timeout=10)
        token = await csrf_of(http, f"/q/{app.name}/dlq")
        done = await http.post(
            f"/q/{app.name}/dlq/purge",
            data={"all": "1", "task": "a", "csrf": token, "confirm": "1"},
        )
        assert done.status_code == 303
    assert [letter.task for letter in await DeadLetters(app).entries()] == ["b"]


async def test_deleting_a_delayed_job_cancels_it(app: App) -> None:
    @app.task(name="later")
    async def later() -> None:
        return None

    job = await later.enqueue_in(3600)
    async with client(create_dashboard(app)) as http:
        token = await csrf_of(http, f"/q/{app.name}/delayed")
        done = await http.post(
            f"/q/{app.name}/delayed/cancel", data={"job": job.id, "csrf": token, "confirm": "1"}
        )
        assert done.status_code == 303 and "cancelled" in done.headers["location"]
    assert await job.status() == JobStatus.CANCELLED
    redis = await app.redis()
    assert await redis.zcard(app.keys.delayed) == 0


async def test_read_only_hides_forms_and_refuses_posts(app: App) -> None:
    @app.task(name="later")
    async def later() -> None:
        return None

    job = await later.enqueue_in(3600)
    async with client(create_dashboard(app, read_only=True)) as http:
        page = await http.get(f"/q/{app.name}/delayed")
        assert page.status_code == 200 and job.id in page.text
        assert '<form method="post"' not in page.text and 'data-testid="read-only"' in page.text
        token = http.cookies.get("streamq_csrf")
        assert token
        refused = await http.post(
            f"/q/{app.name}/delayed/cancel", data={"job": job.id, "csrf": token, "confirm": "1"}
        )
        assert refused.status_code == 403
    assert await job.status() == JobStatus.SCHEDULED
    await job.cancel()


async def test_basic_auth_is_required_when_configured(app: App) -> None:
    asgi = create_dashboard(app, auth="admin:s3cret")
    async with client(asgi) as http:
        refused = await http.get(f"/q/{app.name}/")
        assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
        wrong = await http.get(f"/q/{app.name}/", auth=("admin", "nope"))
        assert wrong.status_code == 401
        ok = await http.get(f"/q/{app.name}/", auth=("admin", "s3cret"))
        assert ok.status_code == 200


async def test_token_auth_by_bearer_or_once_by_query_then_cookie(app: App) -> None:
    asgi = create_dashboard(app, auth="token:abc123")
    async with client(asgi) as http:
        assert (await http.get(f"/q/{app.name}/")).status_code == 401
        bearer = await http.get(f"/q/{app.name}/", headers={"authorization": "Bearer abc123"})
        assert bearer.status_code == 200
        assert (await http.get(f"/q/{app.name}/", params={"token": "nope"})).status_code == 401
        first = await http.get(f"/q/{app.name}/", params={"token": "abc123"})
        assert first.status_code == 200 and "abc123" not in str(http.cookies.get("streamq_token"))
        assert (await http.get(f"/q/{app.name}/workers")).status_code == 200  # the cookie


def test_bad_auth_and_no_apps_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        create_dashboard(App("x"), auth="nocolon")
    with pytest.raises(ConfigError):
        create_dashboard([])


async def test_mounted_under_a_prefix_links_stay_under_it(app: App) -> None:
    outer = Starlette(routes=[Mount("/ops", app=create_dashboard(app))])
    async with client(outer) as http:
        home = await http.get("/ops/")
        assert home.status_code == 303 and home.headers["location"] == f"/ops/q/{app.name}/"
        page = await http.get(home.headers["location"])
        assert page.status_code == 200
        links = re.findall(r'(?:href|src|action|data-refresh)="([^"]+)"', page.text)
        assert links and all(link.startswith("/ops/") for link in links), links
        assert (await http.get(f"/ops/q/{app.name}/jobs")).status_code == 200
        css = await http.get("/ops/static/dashboard.css")
        assert css.status_code == 200 and "text/css" in css.headers["content-type"]
        assert "Path=/ops/" in page.headers.get("set-cookie", "") or http.cookies


async def test_several_apps_in_one_dashboard(app: App, redis_url: str) -> None:
    other = App(queue_name(), redis_url=redis_url)

    @other.task(name="ping")
    async def ping() -> None:
        return None

    try:
        job = await ping.enqueue()
        async with client(create_dashboard([app, other])) as http:
            first = await http.get(f"/q/{app.name}/")
            assert first.status_code == 200
            assert f'href="/q/{other.name}/"' in first.text  # the queue switcher
            jobs = await http.get(f"/q/{other.name}/jobs")
            assert job.id in jobs.text
            assert (await http.get("/q/nope/")).status_code == 404
        with pytest.raises(ConfigError):
            create_dashboard([app, App(app.name, redis_url=redis_url)])
    finally:
        await drop_queue(other)
        await other.close()


def test_cli_refuses_a_public_bind_without_auth(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dashboard", "tests.apps.slow:app", "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--auth" in err


def test_static_js_is_ours_and_small() -> None:
    from streamq.dashboard.render import STATIC

    js = (STATIC / "dashboard.js").read_text()
    assert "data-refresh" in js or "dataset.refresh" in js
    assert len(js) < 4000


def test_cli_serves_the_dashboard_and_stops_on_sigint(redis_url: str) -> None:
    """`streamq dashboard` really serves (uvicorn) on loopback, and Ctrl-C ends it cleanly."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from tests.conftest import subprocess_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = subprocess_env(redis_url, STREAMQ_TEST_QUEUE=queue_name())
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamq", "dashboard", "tests.apps.slow:app", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=True, timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(0.05)
        assert page.status_code == 200 and 'data-testid="overview-live"' in page.text
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()


async def test_a_partitioned_queue_shows_and_acts_on_every_partition(redis_url: str) -> None:
    """App(partitions=3): the DLQ page, its entries (``p/<id>``), requeue and purge (one
    and all of a task), the job page and search (paged by cursor), the delayed page with
    Run now / Delete, and the workers page each cover partitions 1 and 2, not just 0."""
    from streamq.dashboard.spread import search_jobs
    from streamq.partition_ops import AllDeadLetters
    from streamq.settings import Settings

    app = App(
        queue_name(),
        settings=Settings(redis_url=redis_url, partitions=3, janitor_interval_s=0.05),
    )

    @app.task(name="ok")
    async def ok(n: int) -> int:
        return n

    @app.task(name="boom", max_retries=0)
    async def boom(n: int) -> None:
        raise RuntimeError(f"boom {n}")

    @app.task(name="bust", max_retries=0)
    async def bust(n: int) -> None:
        raise RuntimeError(f"bust {n}")

    base = f"/q/{app.name}"
    async with app, client(create_dashboard(app)) as http:
        done = await ok.enqueue_many([(n,) for n in range(3)])
        dead = await boom.enqueue_many([(n,) for n in range(3)])
        dead += await bust.enqueue_many([(n,) for n in range(3)])
        later = [await ok.enqueue_in(3600, n) for n in range(3)]
        assert {j.partition for j in done} == {j.partition for j in dead} == {0, 1, 2}
        assert {j.partition for j in later} == {0, 1, 2}
        async with running_worker(app, partitions=[1, 2]) as worker:
            for job in done + dead:
                if job.partition:
                    await job.wait(timeout=10)
            page = await http.get(f"{base}/workers")
            assert f'data-consumer="{worker.consumer}"' in page.text  # groups of 1 and 2 only
        async with running_worker(app, partitions=[0]):
            for job in done + dead:
                await job.wait(timeout=10)
        letters = AllDeadLetters(app)
        assert await letters.count() == 6
        dlq = await http.get(f"{base}/dlq")
        by_job = {j.id: j for j in dead}
        addresses = re.findall(r'data-entry-id="([^"]+)" data-job-id="([^"]+)"', dlq.text)
        assert sorted(job for _, job in addresses) == sorted(by_job)
        for address, job_id in addresses:
            index = by_job[job_id].partition
            assert address.startswith(f"{index}/") == (index > 0)
        boom_in = {by_job[j].partition: a for a, j in addresses if by_job[j].task == "boom"}
        shown = await http.get(f"{base}/dlq/{boom_in[2]}")
        assert shown.status_code == 200 and "RuntimeError" in shown.text
        assert (await http.get(f"{base}/dlq/7/1-0")).status_code == 404
        token = await csrf_of(http, f"{base}/dlq")

        async def post(path: str, **form: str) -> httpx.Response:
            reply = await http.post(f"{base}{path}", data={**form, "csrf": token, "confirm": "1"})
            assert reply.status_code == 303, reply.text
            return reply

        assert "requeued" in (await post("/dlq/requeue", entry=boom_in[2])).headers["location"]
        await post("/dlq/purge", entry=boom_in[1])
        assert await letters.count() == 4
        await post("/dlq/requeue", all="1", task="boom")  # what is left of boom: partition 0
        assert {d.task for d in await letters.entries()} == {"bust"}
        await post("/dlq/purge", all="1", task="bust")
        assert await letters.count() == 0

        job_page = await http.get(f"{base}/jobs/{next(j for j in done if j.partition == 2).id}")
        assert 'class="status-succeeded">succeeded' in job_page.text
        listed = await http.get(f"{base}/jobs", params={"status": "succeeded"})
        assert all(f'data-job-id="{j.id}"' in listed.text for j in done)
        seen: list[str] = []
        cursor = None
        while True:  # one row a page: the cursor goes on exactly after the last row
            found = await search_jobs(app, cursor=cursor, limit=1)
            seen += [row.id for row in found.rows]
            if found.next_cursor is None:
                break
            cursor = found.next_cursor
        assert sorted(seen) == sorted({j.id for j in done + dead + later})

        delayed = await http.get(f"{base}/delayed")
        assert all(f'data-job-id="{j.id}"' in delayed.text for j in later)
        far = [j for j in later if j.partition]
        await post("/delayed/run-now", job=far[0].id)
        await post("/delayed/cancel", job=far[-1].id)
        assert await app.job(far[0].id).status() == JobStatus.QUEUED
        assert await app.job(far[-1].id).status() == JobStatus.CANCELLED
        await empty_partitions(app)


async def empty_partitions(app: App) -> None:
    for index in range(app.partitions):
        await drop_queue(app.partition(index))
