"""Job ids carry their enqueue time (UUIDv7 layout), so history can be read from it."""

from __future__ import annotations

import time
import uuid

import pytest

from streamq import App
from streamq.ids import job_id_time_ms, new_job_id


def test_new_ids_are_uuid7_hex_that_sort_by_time() -> None:
    before = int(time.time() * 1000)
    ids = [new_job_id() for _ in range(2000)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == len(ids)
    for job_id in ids:
        assert len(job_id) == 32 and int(job_id, 16) >= 0
        assert uuid.UUID(hex=job_id).version == 7
        assert uuid.UUID(hex=job_id).variant == uuid.RFC_4122
        ms = job_id_time_ms(job_id)
        assert ms is not None and before <= ms <= after
    # Ids from later milliseconds sort after earlier ones (same ms: random order).
    times = [job_id_time_ms(i) for i in sorted(ids)]
    assert times == sorted(times)


@pytest.mark.parametrize(
    "job_id",
    ["", "order-42", uuid.uuid4().hex, "0" * 32, "zz" * 16, new_job_id() + "0", str(uuid.uuid4())],
    # Fixed ids: test ids must be the same in every process (pytest-xdist collects in each).
    ids=["empty", "custom", "uuid-hex", "zeros", "not-hex", "too-long", "uuid"],
)
def test_ids_without_a_time_say_so(job_id: str) -> None:
    """A custom job_id, a random (v4) id or anything else has no enqueue time."""
    assert job_id_time_ms(job_id) is None


@pytest.mark.anyio
async def test_enqueue_gives_time_ordered_ids(app: App) -> None:
    @app.task(name="noop")
    async def noop() -> None:
        return None

    before = int(time.time() * 1000)
    jobs = await noop.enqueue_many([() for _ in range(50)])
    single = await noop.enqueue()
    custom = await noop.with_options(job_id="order-42").enqueue()
    for job in [*jobs, single]:
        ms = job_id_time_ms(job.id)
        assert ms is not None and ms >= before
    assert custom.id == "order-42" and job_id_time_ms(custom.id) is None
