"""A FastAPI service: enqueue from a route, await a result, stream a job's progress.

    POST /reports                  {"customer": "acme", "steps": 4}
                                   202 {"id", "status", "result_url", "events_url"}
                                   503 when the queue is full, with Retry-After
    GET  /reports/{id}?wait=5      the result, waiting up to 5 s for it
    GET  /reports/{id}/events      Server-Sent Events: one per progress report and
                                   status change, until the job is final

The App is opened once in FastAPI's lifespan, so every request shares one
connection pool. ``job.watch()`` is woken by the job's own events through
the App's single events reader: a thousand open event streams hold no
connection each and poll nothing. Run a worker beside it:

    uvicorn examples.fastapi_app:api --port 8000     # or: python examples/fastapi_app.py
    streamq worker examples.fastapi_app:app          # in another terminal
    curl -d '{"customer": "acme"}' -H 'content-type: application/json' 127.0.0.1:8000/reports
    curl -N 127.0.0.1:8000/reports/<id>/events

``$STREAMQ_EXAMPLE_QUEUE`` overrides the queue name, ``$STREAMQ_EXAMPLE_MAX_PENDING``
the backpressure limit.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from streamq import App, JobFailed, JobNotFound, QueueFull, progress

app = App(
    os.environ.get("STREAMQ_EXAMPLE_QUEUE", "fastapi-example"),
    max_pending=int(os.environ.get("STREAMQ_EXAMPLE_MAX_PENDING", "1000")),
)
MAX_WAIT_S = 30.0  # a request holds a connection while it waits: keep it bounded


@app.task(name="render_report", timeout=120)
async def render_report(customer: str, steps: int = 4) -> dict[str, Any]:
    for step in range(1, steps + 1):
        await anyio.sleep(0.05)  # stands in for one query of the report
        await progress(100 * step / steps, f"step {step} of {steps}")
    return {"customer": customer, "pages": steps}


class ReportRequest(BaseModel):
    customer: str = Field(min_length=1)
    steps: int = Field(default=4, ge=1, le=100)


@contextlib.asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    async with app:  # one pool for every request; closed on shutdown
        yield


api = FastAPI(title="streamq FastAPI example", lifespan=lifespan)


@api.post("/reports", status_code=202)
async def create_report(body: ReportRequest) -> dict[str, str]:
    try:
        job = await render_report.enqueue(body.customer, body.steps)
    except QueueFull:
        raise HTTPException(
            503, "too many reports waiting; try again later", headers={"Retry-After": "5"}
        ) from None
    return {
        "id": job.id,
        "status": "queued",
        "result_url": f"/reports/{job.id}",
        "events_url": f"/reports/{job.id}/events",
    }


@api.get("/reports/{job_id}")
async def get_report(
    job_id: str, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0
) -> JSONResponse:
    job = app.job(job_id)
    try:
        result = await job.result(timeout=wait)
    except JobNotFound:
        raise HTTPException(404, f"no report {job_id}") from None
    except JobFailed as exc:
        return JSONResponse({"id": job_id, "status": "failed", "error": exc.error_type})
    except TimeoutError:
        return JSONResponse({"id": job_id, "status": str(await job.status())})
    return JSONResponse({"id": job_id, "status": "succeeded", "result": result})


@api.get("/reports/{job_id}/events")
async def report_events(job_id: str) -> StreamingResponse:
    job = app.job(job_id)
    try:
        await job.status()
    except JobNotFound:
        raise HTTPException(404, f"no report {job_id}") from None

    async def stream() -> AsyncIterator[str]:
        async for update in job.watch(timeout=MAX_WAIT_S * 10):
            data: dict[str, Any] = {"status": str(update.status)}
            if update.progress is not None:
                data["percent"] = update.progress.percent
                data["message"] = update.progress.message
            kind = "status" if update.final else "progress"
            yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


if __name__ == "__main__":
    # Loopback only: put a reverse proxy in front to serve other machines.
    uvicorn.run(api, host="127.0.0.1", port=8000)
