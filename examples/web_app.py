"""A web app (Starlette) that enqueues jobs and hands back their results.

    POST /jobs           {"customer": "acme", "days": 7}
                         202 {"id": ..., "status": "queued", "url": "/jobs/<id>"}
                         503 when the queue is full (Retry-After says when to try again)
    GET  /jobs/{id}      200 {"id": ..., "status": ..., "result" or "error": ...}
    GET  /jobs/{id}?wait=5   waits up to 5 s for the job to finish first

The web process only enqueues and reads; workers run the jobs, so the two
scale apart. Run both against one server:

    python examples/web_app.py                     # serves on http://127.0.0.1:8000
    streamq worker examples.web_app:app            # in another terminal

or ``python examples/web_app.py --with-worker`` for a one-process demo, then
``curl -d '{"customer": "acme"}' 127.0.0.1:8000/jobs`` and
``curl '127.0.0.1:8000/jobs/<id>?wait=5'``.
``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name, ``$STREAMQ_EXAMPLE_MAX_PENDING``
the backpressure limit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from streamq import App, JobFailed, JobNotFound, QueueFull, Worker

# max_pending: past this many unfinished jobs, enqueue raises QueueFull and
# POST /jobs answers 503, instead of letting the queue grow without bound.
app = App(
    os.environ.get("STREAMQ_EXAMPLE_QUEUE", "web-example"),
    max_pending=int(os.environ.get("STREAMQ_EXAMPLE_MAX_PENDING", "1000")),
)
MAX_WAIT_S = 30.0  # a request holds a connection while it waits: keep it bounded


@app.task(name="build_report", timeout=60)
async def build_report(customer: str, days: int = 30) -> dict[str, Any]:
    await anyio.sleep(0.05)  # stands in for the queries behind a report
    return {"customer": customer, "days": days, "orders": 3 * days}


async def create_job(request: Request) -> JSONResponse:
    try:
        params = await request.json()
    except ValueError:
        return JSONResponse({"error": "the body must be JSON"}, status_code=400)
    if not isinstance(params, dict):
        return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
    try:
        # Checked against build_report's signature before anything is written.
        job = await build_report.enqueue(**params)
    except QueueFull:
        return JSONResponse(
            {"error": "too many jobs waiting; try again later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    except TypeError as exc:  # arguments that do not fit build_report(customer, days)
        return JSONResponse({"error": str(exc)}, status_code=422)
    url = f"/jobs/{job.id}"
    return JSONResponse(
        {"id": job.id, "status": "queued", "url": url}, status_code=202, headers={"Location": url}
    )


async def get_job(request: Request) -> JSONResponse:
    job = app.job(request.path_params["job_id"])
    try:
        wait_s = float(request.query_params.get("wait", "0"))
    except ValueError:
        wait_s = -1.0
    if not 0 <= wait_s <= MAX_WAIT_S:
        return JSONResponse({"error": f"wait must be 0 to {MAX_WAIT_S} seconds"}, status_code=400)
    body: dict[str, Any] = {"id": job.id}
    try:
        # result() waits on the events stream (no polling) and, with wait=0,
        # answers at once: the result, JobFailed, or TimeoutError if not done.
        body["result"] = await job.result(timeout=wait_s)
        body["status"] = "succeeded"
    except JobFailed as exc:
        body["status"] = str(await job.status())
        body["error"] = f"{exc.error_type}: {exc.message}"
    except TimeoutError:
        body["status"] = str(await job.status())
    except JobNotFound:
        return JSONResponse({"error": f"no job {job.id}"}, status_code=404)
    return JSONResponse(body)


@contextlib.asynccontextmanager
async def lifespan(web: Starlette) -> AsyncIterator[None]:
    # One connection pool for every request, opened at startup and closed on
    # shutdown (an embedded server keeps running for the workers).
    async with app:
        if not getattr(web.state, "with_worker", False):
            yield
            return
        worker = Worker(app, concurrency=20)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            try:
                yield
            finally:
                worker.stop()


api = Starlette(
    routes=[
        Route("/jobs", create_job, methods=["POST"]),
        Route("/jobs/{job_id}", get_job, methods=["GET"]),
    ],
    lifespan=lifespan,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the streamq web example.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--with-worker", action="store_true", help="also run a worker in this process (a demo)"
    )
    args = parser.parse_args(argv)
    api.state.with_worker = args.with_worker
    # Loopback only: put a reverse proxy in front to serve other machines.
    uvicorn.run(api, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
