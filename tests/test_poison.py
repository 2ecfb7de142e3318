"""Poison messages: an entry that cannot run goes to the DLQ with a reason.

DESIGN.md invariant 7: a message that cannot be decoded or names an unknown
task never crashes or wedges a worker. Without the decode guard in the worker,
each of these entries would raise inside the handler task and take the worker
(and its task group) down, so the good jobs after them would never run.
"""

from __future__ import annotations

import pytest

from streamq import App, Worker
from streamq.keys import GROUP

pytestmark = pytest.mark.anyio

GOOD = {b"v": b"1", b"ct": b"json", b"attempt": b"1", b"enq_ms": b"0"}


def entry(**fields: bytes) -> dict[bytes, bytes]:
    out = dict(GOOD)
    out.update({k.encode(): v for k, v in fields.items()})
    return out


POISON = {
    "no fields we know": ({b"foo": b"bar"}, "version"),
    "no job id": ({b"v": b"1", b"task": b"t"}, "no job id"),
    "not json": (entry(id=b"j1", task=b"ok", payload=b"{not json"), "cannot be decoded"),
    "bad utf-8": (entry(id=b"j2", task=b"ok", payload=b"\xff\xfe"), "cannot be decoded"),
    "wrong shape": (entry(id=b"j3", task=b"ok", payload=b"[1, 2]"), "args and kwargs"),
    "wrong types": (
        entry(id=b"j4", task=b"ok", payload=b'{"args": {}, "kwargs": []}'),
        "not a list",
    ),
    "pickle": (
        entry(id=b"j5", task=b"ok", ct=b"pickle", payload=b"\x80\x04K\x01."),
        "content type",
    ),
    "bad attempt": (entry(id=b"j7", task=b"ok", payload=b"{}", attempt=b"x"), "not a number"),
    "task not utf-8": (entry(id=b"j8", task=b"\xff", payload=b"{}"), "UTF-8"),
}


@pytest.mark.parametrize("name", sorted(POISON))
async def test_poison_entry_goes_to_the_dlq_with_a_reason(app: App, name: str) -> None:
    fields, reason = POISON[name]

    @app.task(name="ok")
    async def ok() -> str:
        return "fine"

    redis = await app.redis()
    stream = app.keys.stream("default")
    before = await ok.enqueue()
    poison_id = await redis.xadd(stream, fields)  # type: ignore[arg-type]
    after = await ok.enqueue()
    await Worker(app, burst=True).run()

    assert await before.result(timeout=1) == "fine"
    assert await after.result(timeout=1) == "fine"
    ((dlq_id, dead),) = await redis.xrange(app.keys.dlq)
    assert reason in dead[b"dlq_reason"].decode()
    assert dead[b"dlq_origin"] == stream.encode()
    assert dead[b"dlq_origin_id"] == poison_id
    assert dead[b"dlq_deliveries"] == b"1"
    for key, value in fields.items():  # the original fields are kept for inspection
        assert dead[key] == value
    assert int((await redis.xpending(stream, GROUP))["pending"]) == 0


# Unknown tasks (handed back, then UnknownTask in the DLQ): tests/test_unknown_tasks.py.


async def test_many_poison_entries_among_good_jobs(app: App) -> None:
    @app.task(name="ok")
    async def ok(n: int) -> int:
        return n

    redis = await app.redis()
    stream = app.keys.stream("default")
    jobs = []
    for i in range(50):
        jobs.append(await ok.enqueue(i))
        if i % 10 == 0:
            await redis.xadd(stream, {b"garbage": str(i).encode()})
    await Worker(app, concurrency=8, burst=True).run()
    assert [await j.result(timeout=1) for j in jobs] == list(range(50))
    assert await redis.xlen(app.keys.dlq) == 5
