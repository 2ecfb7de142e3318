"""The dashboard's actions (POST, CSRF-checked): DLQ requeue and purge, delayed jobs
(run now, delete), over every partition of a partitioned queue.

Each action first renders a confirmation page that says what it will do; the
confirmation's own form (with ``confirm=1``) does it, then redirects back with
a one-line message (POST/redirect/GET, so a reload repeats nothing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from streamq.cancel import CancelResult
from streamq.dashboard.render import render, url
from streamq.dashboard.routes import queue_of
from streamq.dashboard.security import checked_form
from streamq.delayed import RunNowResult
from streamq.dlq import DeadLetterNotFound, DeadLetters, RequeueRefused
from streamq.errors import ConfigError
from streamq.partition_ops import AllDeadLetters, split_entry_id
from streamq.partitions import all_partitions, cancel_jobs, run_now

if TYPE_CHECKING:
    from streamq.app import App
    from streamq.dashboard import Dashboard

_DELETE_BATCH = 500


def _field(form: dict[str, str], name: str) -> str:
    return form.get(name, "").strip()


def _entry(form: dict[str, str]) -> str:
    """A DLQ entry's address: ``<entry id>``, or ``<partition>/<entry id>``."""
    entry = _field(form, "entry")
    try:
        split_entry_id(entry)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return entry


def _confirm(
    dashboard: Dashboard, request: Request, form: dict[str, str], question: str, back: str
) -> Response:
    hidden = {k: v for k, v in form.items() if k not in ("csrf", "confirm")}
    return render(
        dashboard, request, "confirm.html", question=question, action=request.url.path,
        hidden=hidden, back=back,
    )  # fmt: skip


def _done(request: Request, name: str, message: str, **query: Any) -> Response:
    target = url(request, name, {"done": message, **query}, queue=request.path_params["queue"])
    return RedirectResponse(target, status_code=303)


def routes(dashboard: Dashboard) -> list[Route]:
    async def dlq_requeue(request: Request) -> Response:
        app = queue_of(dashboard, request)
        form = await checked_form(request)
        letters = AllDeadLetters(app)  # every partition
        task = _field(form, "task") or None
        back = url(request, "dlq", {"task": task}, queue=app.name)
        if _field(form, "all"):
            if not _field(form, "confirm"):
                what = f"of task {task}" if task else "in the DLQ"
                return _confirm(dashboard, request, form, f"Requeue every entry {what}?", back)
            ids = await letters.requeue_all(task=task)
            return _done(request, "dlq", f"requeued {len(ids)} job(s)", task=task)
        entry = _entry(form)
        if not _field(form, "confirm"):
            return _confirm(dashboard, request, form, f"Requeue DLQ entry {entry}?", back)
        try:
            job_id = await letters.requeue(entry)
        except DeadLetterNotFound as exc:
            return _done(request, "dlq", str(exc))
        except RequeueRefused as exc:
            return _done(request, "dlq", str(exc))
        return _done(request, "dlq", f"requeued job {job_id}")

    async def dlq_purge(request: Request) -> Response:
        app = queue_of(dashboard, request)
        form = await checked_form(request)
        task = _field(form, "task") or None
        back = url(request, "dlq", {"task": task}, queue=app.name)
        if _field(form, "all"):
            if not _field(form, "confirm"):
                what = f"of task {task}" if task else "in the DLQ"
                return _confirm(
                    dashboard, request, form, f"Delete every entry {what}? This cannot be undone.",
                    back,
                )  # fmt: skip
            removed = await _purge_all(app, task)
            return _done(request, "dlq", f"purged {removed} entr{'y' if removed == 1 else 'ies'}")
        entry = _entry(form)
        if not _field(form, "confirm"):
            return _confirm(
                dashboard, request, form, f"Delete DLQ entry {entry}? This cannot be undone.", back
            )
        index, entry_id = split_entry_id(entry)
        redis = await app.redis()
        removed = int(await redis.xdel(app.partition(index).keys.dlq, entry_id))
        return _done(request, "dlq", f"purged entry {entry}" if removed else f"no entry {entry}")

    async def delayed_action(
        request: Request, question: str, act: Callable[[App, str], Awaitable[str]]
    ) -> Response:
        """One delayed job's action: its id from the form, confirmed first, then done."""
        app = queue_of(dashboard, request)
        form = await checked_form(request)
        job_id = _field(form, "job")
        if not job_id:
            raise ConfigError("no job id given")
        if not _field(form, "confirm"):
            back = url(request, "delayed", queue=app.name)
            return _confirm(dashboard, request, form, question.format(job=job_id), back)
        return _done(request, "delayed", await act(app, job_id))

    async def cancel_one(app: App, job_id: str) -> str:
        result = (await cancel_jobs(app, [job_id], by="dashboard"))[job_id]
        return {
            CancelResult.CANCELLED: f"cancelled job {job_id}",
            CancelResult.REQUESTED: f"job {job_id} is running: asked its worker to stop it",
            CancelResult.ALREADY_FINAL: f"job {job_id} had already finished",
            CancelResult.NOT_FOUND: f"no job {job_id}",
        }[result]

    async def run_one_now(app: App, job_id: str) -> str:
        result = (await run_now(app, [job_id], by="dashboard"))[job_id]
        return {
            RunNowResult.MOVED: f"job {job_id} queued to run now",
            RunNowResult.NOT_DELAYED: f"job {job_id} was not delayed any more",
            RunNowResult.ALREADY_FINAL: f"job {job_id} had already finished",
            RunNowResult.NOT_FOUND: f"no job {job_id}",
            RunNowResult.CORRUPT: f"job {job_id}'s delayed entry is corrupt: left to the janitor",
        }[result]

    async def delayed_cancel(request: Request) -> Response:
        return await delayed_action(request, "Cancel job {job}? It will not run.", cancel_one)

    async def delayed_run_now(request: Request) -> Response:
        return await delayed_action(request, "Run job {job} now, before its due time?", run_one_now)

    return [
        Route("/q/{queue}/dlq/requeue", dlq_requeue, methods=["POST"], name="dlq_requeue"),
        Route("/q/{queue}/dlq/purge", dlq_purge, methods=["POST"], name="dlq_purge"),
        Route("/q/{queue}/delayed/cancel", delayed_cancel, methods=["POST"], name="delayed_cancel"),
        Route(
            "/q/{queue}/delayed/run-now", delayed_run_now, methods=["POST"], name="delayed_run_now"
        ),
    ]


async def _purge_all(app: App, task: str | None) -> int:
    """Delete every DLQ entry (of one task) in every partition."""
    return sum([await _purge_all_in(view, task) for view in await all_partitions(app)])


async def _purge_all_in(app: App, task: str | None) -> int:
    """Delete every DLQ entry (of one task): an explicit action, so it may walk the DLQ."""
    letters = DeadLetters(app)
    if task is None:
        return await letters.purge()
    redis = await app.redis()
    ids = [letter.id async for letter in letters.iter(task=task)]
    removed = 0
    for i in range(0, len(ids), _DELETE_BATCH):
        removed += int(await redis.xdel(app.keys.dlq, *ids[i : i + _DELETE_BATCH]))
    return removed
