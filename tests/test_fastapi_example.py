"""examples/fastapi_app.py against a real server and worker, through httpx."""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.conftest import assert_no_key_leak, queue_name, running_worker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def example(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example imported afresh on a fresh queue with room for 2 pending jobs."""
    monkeypatch.setenv("STREAMQ_REDIS_URL", redis_url)
    monkeypatch.setenv("STREAMQ_EXAMPLE_QUEUE", queue_name())
    monkeypatch.setenv("STREAMQ_EXAMPLE_MAX_PENDING", "2")
    spec = importlib.util.spec_from_file_location(
        f"fastapi_app_{uuid.uuid4().hex}", ROOT / "examples" / "fastapi_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def events(body: str) -> list[tuple[str, dict[str, object]]]:
    parsed = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((lines["event"], json.loads(lines["data"])))
    return parsed


@pytest.mark.anyio
async def test_fastapi_service_enqueues_waits_streams_and_sheds_load(example: ModuleType) -> None:
    """POST enqueues (503 + Retry-After on QueueFull, 422 on bad input); GET waits for the
    result; the events stream carries each progress report, then the final status."""
    api, app = example.api, example.app
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client,
    ):
        first = await client.post("/reports", json={"customer": "acme", "steps": 4})
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        assert (await client.post("/reports", json={"customer": "globex"})).status_code == 202
        full = await client.post("/reports", json={"customer": "initech"})
        assert full.status_code == 503 and full.headers["retry-after"] == "5"
        assert (await client.post("/reports", json={"customer": ""})).status_code == 422
        waiting = await client.get(f"/reports/{job_id}")
        assert waiting.json() == {"id": job_id, "status": "queued"}
        assert (await client.get("/reports/nope/events")).status_code == 404

        async with running_worker(app):
            stream = await client.get(f"/reports/{job_id}/events", timeout=30)
            done = await client.get(f"/reports/{job_id}", params={"wait": 10})
        assert stream.headers["content-type"].startswith("text/event-stream")
        seen = events(stream.text)
        percents = [data["percent"] for kind, data in seen if "percent" in data]
        assert percents == sorted(percents) and percents[-1] == 100.0, seen
        assert len(percents) >= 2, seen
        assert seen[-1] == ("status", {"status": "succeeded", "percent": 100.0,
                                       "message": "step 4 of 4"})  # fmt: skip
        assert done.json() == {
            "id": job_id, "status": "succeeded", "result": {"customer": "acme", "pages": 4},
        }  # fmt: skip
        assert (await client.get(f"/reports/{job_id}", params={"wait": 99})).status_code == 422
        await assert_no_key_leak(app)
