"""The dashboard's pages (GET): overview, workers, jobs, one job, DLQ, delayed, schedules.

Each page renders whole; with ``?partial=1`` it renders only its live
fragment, which ``static/dashboard.js`` swaps in every few seconds.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from streamq.app import App
from streamq.dashboard import data, spread
from streamq.dashboard.charts import chart_of
from streamq.dashboard.render import render, url
from streamq.dashboard.security import CsrfRefused
from streamq.dlq import DeadLetterNotFound
from streamq.errors import ConfigError, JobNotFound
from streamq.job import JobStatus
from streamq.partition_ops import AllDeadLetters
from streamq.partition_ops import collect_all as collect  # every partition, summed

if TYPE_CHECKING:
    from streamq.dashboard import Dashboard

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
SSE_TIMEOUT_S = 300.0
"""A job page's event stream ends after this; the browser's EventSource reconnects."""


def queue_of(dashboard: Dashboard, request: Request) -> App:
    app = dashboard.apps.get(request.path_params["queue"])
    if app is None:
        raise HTTPException(404, f"no queue {request.path_params['queue']!r} in this dashboard")
    return app


def _page(
    dashboard: Dashboard, request: Request, template: str, fragment: str, **context: Any
) -> Response:
    """The page, or only its live fragment for ``?partial=1``."""
    chosen = fragment if request.query_params.get("partial") else template
    return render(dashboard, request, chosen, fragment=fragment, **context)


def routes(dashboard: Dashboard) -> list[Route]:
    async def home(request: Request) -> Response:
        if dashboard.demo is not None:
            return RedirectResponse(url(request, "demo"), status_code=303)
        first = next(iter(dashboard.apps))
        return RedirectResponse(url(request, "overview", queue=first), status_code=303)

    async def overview(request: Request) -> Response:
        app = queue_of(dashboard, request)
        stats = await collect(app)
        buckets = await spread.last_hour(dashboard.buckets, app, stats.server_time_ms)
        return _page(
            dashboard, request, "overview.html", "_overview.html",
            queue=app.name, stats=stats, chart=chart_of(buckets),
            refresh_ms=dashboard.refresh_ms,
        )  # fmt: skip

    async def workers(request: Request) -> Response:
        app = queue_of(dashboard, request)
        rows = await spread.workers(app)  # every partition
        return _page(
            dashboard, request, "workers.html", "_workers.html",
            queue=app.name, workers=rows, refresh_ms=dashboard.refresh_ms,
        )  # fmt: skip

    async def jobs(request: Request) -> Response:
        app = queue_of(dashboard, request)
        q = request.query_params
        job_id = (q.get("id") or "").strip()
        if job_id:
            return RedirectResponse(url(request, "job", queue=app.name, job_id=job_id), 303)
        status = q.get("status") or None
        if status is not None and status not in data.STATUSES:
            raise ConfigError(f"unknown status {status!r}")
        page = await spread.search_jobs(
            app, task=q.get("task") or None, status=status, since=q.get("since") or None,
            until=q.get("until") or None, cursor=q.get("cursor") or None,
        )  # fmt: skip
        return render(
            dashboard, request, "jobs.html", queue=app.name, page=page,
            filters={k: q.get(k, "") for k in ("task", "status", "since", "until")},
            statuses=data.STATUSES, tasks=sorted(app.tasks),
        )  # fmt: skip

    async def job(request: Request) -> Response:
        app = queue_of(dashboard, request)
        job_id = request.path_params["job_id"]
        view = await spread.place(app, job_id)  # the partition holding it
        details = None
        if view is not None:
            with contextlib.suppress(JobNotFound):
                details = await view.job(job_id).details()
        story, story_complete = await spread.story(app, job_id)
        if details is None and not story:
            raise HTTPException(404, f"no job {job_id!r} (never enqueued, or its hash expired)")
        progress = None
        if view is not None and details is not None:
            progress = await view.job(job_id).progress()
        final = details is None or details.status.final
        arguments = (
            None
            if details is None or details.args is None
            else data.shown_json({"args": details.args, "kwargs": details.kwargs})
        )
        result = (
            data.shown_json(details.result)
            if details is not None and details.status is JobStatus.SUCCEEDED
            else None
        )
        return _page(
            dashboard, request, "job.html", "_job.html", queue=app.name, job_id=job_id,
            details=details, story=story, story_complete=story_complete, progress=progress,
            final=final, arguments=arguments, result=result, refresh_ms=dashboard.refresh_ms,
        )  # fmt: skip

    async def job_events(request: Request) -> Response:
        """Server-Sent Events: the job's status and progress as they change, until final."""
        app = queue_of(dashboard, request)
        handle = app.job(request.path_params["job_id"])

        async def stream() -> AsyncIterator[str]:
            try:
                async for update in handle.watch(timeout=SSE_TIMEOUT_S):
                    payload = {
                        "status": str(update.status),
                        "percent": update.progress.percent if update.progress else None,
                        "final": update.final,
                    }
                    kind = "final" if update.final else "update"
                    yield f"event: {kind}\ndata: {json.dumps(payload)}\n\n"
            except JobNotFound:
                yield 'event: final\ndata: {"status": null, "final": true}\n\n'
            except TimeoutError:
                return

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    async def dlq(request: Request) -> Response:
        app = queue_of(dashboard, request)
        task = request.query_params.get("task") or None
        page = await spread.dead_letters(app, task=task, cursor=request.query_params.get("cursor"))
        return _page(
            dashboard, request, "dlq.html", "_dlq.html", queue=app.name, page=page,
            task=task or "", tasks=sorted(app.tasks), refresh_ms=dashboard.refresh_ms,
        )  # fmt: skip

    async def dlq_entry(request: Request) -> Response:
        app = queue_of(dashboard, request)
        try:  # an address: <entry id>, or <partition>/<entry id>
            letter = await AllDeadLetters(app).get(request.path_params["entry_id"])
        except (DeadLetterNotFound, ValueError) as exc:
            raise HTTPException(404, str(exc)) from None
        fields = {k: v for k, v in letter.fields.items() if not k.startswith("dlq_")}
        return render(
            dashboard, request, "dlq_entry.html", queue=app.name, letter=letter,
            fields=data.shown_json(fields),
        )  # fmt: skip

    async def delayed(request: Request) -> Response:
        app = queue_of(dashboard, request)
        try:
            offset = int(request.query_params.get("offset") or 0)
        except ValueError:
            raise ConfigError("offset must be a whole number") from None
        page = await spread.delayed(app, offset=offset)
        return _page(
            dashboard, request, "delayed.html", "_delayed.html", queue=app.name, page=page,
            refresh_ms=dashboard.refresh_ms, page_size=data.PAGE,
        )  # fmt: skip

    async def schedules(request: Request) -> Response:
        app = queue_of(dashboard, request)
        return render(
            dashboard, request, "schedules.html", queue=app.name,
            schedules=await data.schedules(app), limits=await data.limits(app),
        )  # fmt: skip

    return [
        Route("/", home, name="home"),
        Route("/q/{queue}/", overview, name="overview"),
        Route("/q/{queue}/workers", workers, name="workers"),
        Route("/q/{queue}/jobs", jobs, name="jobs"),
        Route("/q/{queue}/jobs/{job_id:path}/events", job_events, name="job_events"),
        Route("/q/{queue}/jobs/{job_id:path}", job, name="job"),
        Route("/q/{queue}/dlq", dlq, name="dlq"),
        Route("/q/{queue}/dlq/{entry_id:path}", dlq_entry, name="dlq_entry"),
        Route("/q/{queue}/delayed", delayed, name="delayed"),
        Route("/q/{queue}/schedules", schedules, name="schedules"),
    ]


def exception_handlers(dashboard: Dashboard) -> dict[Any, Any]:
    async def refused(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("CSRF token missing or wrong: reload the page\n", 403)

    async def bad_input(request: Request, exc: Exception) -> Response:
        return render(dashboard, request, "error.html", status_code=400, message=str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code in (404, 400) and "csrf" in request.state._state:
            return render(
                dashboard, request, "error.html", status_code=exc.status_code, message=exc.detail
            )
        return PlainTextResponse(str(exc.detail), exc.status_code)

    return {CsrfRefused: refused, ConfigError: bad_input, HTTPException: http_error}
