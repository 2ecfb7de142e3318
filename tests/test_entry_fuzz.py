"""Fuzz: whatever lands in a stream, a worker that requires signatures either runs a
well-formed job or dead-letters the entry with a reason (issue 16, point 7).

Hypothesis draws batches of raw entries: well-formed signed jobs, the same with
fields deleted or set to garbage (random bytes, non-UTF-8, huge values, wrong
versions, numbers out of range or over the caps), signed again after the
change (so garbage gets past the signature check to the decoder) or not, with
unknown key ids, broken or missing signatures, and entries of random fields.
They are XADDed raw to a queue's stream and one burst worker drains them.
Then: every entry either ran its handler once with exactly its payload's
arguments or sits in the DLQ with a non-empty reason, never both; an entry
that was not changed ran; nothing is left pending or unread; the worker ended
cleanly (a crash would raise out of ``run``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streamq import App, Settings, Worker, current_job
from streamq.keys import GROUP
from streamq.signing import Signer, Verifier
from tests.conftest import drop_queue, queue_name

pytestmark = pytest.mark.anyio

K1 = b"fuzz-secret-0123456789abcdef"
SIGNER = Signer("k1", K1)
VERIFIER = Verifier({b"k1": K1}, required=True)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
garbage = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.sampled_from([b"9", b"\xff", b"[", b"a"]), st.integers(60_000, 2_000_000)).map(
        lambda t: t[0] * t[1]
    ),  # huge
    st.sampled_from([
        b"", b"\xff\xfe\xfd", b"\xed\xa0\x80", b"nan", b"inf", b"-inf", b"-1", b"0", b"1e999",
        b"1e9", b"100000", b"99999999999999999999999", b"2", b"[]", b"{}", b"null", b"[1e99]",
        b'{"a": 1}', b'{"": "x"}', b'{"args": [], "kwargs": {}}', b'{"args": {}, "kwargs": []}',
        b"[" * 5000, b"pickle", b"json", b"echo", b"1", b"0-1",
    ]),
)  # fmt: skip
FIELDS = [
    b"v", b"id", b"task", b"ct", b"payload", b"attempt", b"enq_ms", b"max_retries", b"timeout",
    b"headers", b"retry_intervals", b"result_ttl", b"kid", b"sig",
]  # fmt: skip
field_names = st.sampled_from(FIELDS) | st.binary(min_size=1, max_size=12)


@st.composite
def well_formed(draw: st.DrawFn) -> dict[bytes, bytes]:
    args = draw(st.lists(json_values, max_size=3))
    kwargs = draw(st.dictionaries(st.text(min_size=1, max_size=6), json_values, max_size=2))
    fields = {
        b"v": b"1", b"id": uuid.uuid4().hex.encode(), b"task": b"echo", b"ct": b"json",
        b"payload": json.dumps({"args": args, "kwargs": kwargs}).encode(), b"attempt": b"1",
        b"enq_ms": b"1764000000000",
    }  # fmt: skip
    if draw(st.booleans()):
        fields[b"max_retries"] = str(draw(st.integers(0, 100))).encode()
    if draw(st.booleans()):
        fields[b"timeout"] = repr(draw(st.floats(5, 86_400))).encode()
    if draw(st.booleans()):
        headers = draw(st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5)))
        fields[b"headers"] = json.dumps(headers).encode()
    if draw(st.booleans()):
        fields[b"retry_intervals"] = json.dumps(
            draw(st.lists(st.floats(0, 60), min_size=1, max_size=3))
        ).encode()
    if draw(st.booleans()):
        fields[b"result_ttl"] = repr(draw(st.floats(1, 86_400))).encode()
    return fields


def signed(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    out = {k: v for k, v in fields.items() if k not in (b"kid", b"sig")}
    return {**out, b"kid": b"k1", b"sig": SIGNER.sign(out).encode()}


@st.composite
def entries(draw: st.DrawFn) -> tuple[dict[bytes, bytes], bool]:
    """An entry and whether it is the well-formed signed job unchanged (it must run)."""
    kind = draw(st.sampled_from(["good", "mutated", "resigned", "random"]))
    if kind == "random":
        fields = draw(st.dictionaries(field_names, garbage, max_size=8))
        if draw(st.booleans()):
            fields[b"kid"], fields[b"sig"] = b"k1", draw(garbage)
        return fields or {b"x": b"y"}, False
    fields = signed(draw(well_formed()))
    if kind == "good":
        return fields, True
    for _ in range(draw(st.integers(1, 3))):
        name = draw(field_names)
        if name == b"id":
            fields[name] = draw(st.sampled_from([b"", b"\xff", uuid.uuid4().hex.encode()]))
        elif draw(st.booleans()) and name in fields and len(fields) > 1:
            del fields[name]
        else:
            fields[name] = draw(garbage)
    if kind == "resigned":
        if fields.get(b"task", b"echo") not in (b"echo", b"", b"\xff"):
            fields[b"task"] = b"echo"  # an unknown task is handed back, not dead (tested elsewhere)
        fields = signed(fields)
    return fields, False


async def check_batch(redis_url: str, batch: list[tuple[dict[bytes, bytes], bool]]) -> None:
    app = App(
        queue_name(),
        settings=Settings(
            redis_url=redis_url, signing_keys={"k1": K1}, require_signatures=True,
            janitor_interval_s=0.05,
        ),
    )  # fmt: skip
    ran: list[tuple[str, list[Any], dict[str, Any]]] = []

    @app.task(name="echo", max_retries=0)
    async def echo(*args: Any, **kwargs: Any) -> None:
        ran.append((current_job().job_id, list(args), kwargs))

    async with app:
        redis = await app.redis()
        stream = app.keys.stream("default")
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        written = {}
        for fields, must_run in batch:
            msg_id = await redis.xadd(stream, fields)  # type: ignore[arg-type]
            written[msg_id] = (fields, must_run)
        await Worker(app, burst=True, concurrency=8).run()

        dead = {f[b"dlq_origin_id"]: f[b"dlq_reason"] for _, f in await redis.xrange(app.keys.dlq)}
        runs: dict[str, list[tuple[list[Any], dict[str, Any]]]] = {}
        for job_id, args, kwargs in ran:
            runs.setdefault(job_id, []).append((args, kwargs))
        assert all(len(r) == 1 for r in runs.values()), f"a job ran twice: {runs}"
        accounted = set()
        for msg_id, (fields, must_run) in written.items():
            job_id = fields.get(b"id", b"").decode(errors="replace")
            if VERIFIER.reason(fields) is not None:
                assert msg_id in dead, f"an entry without a valid signature ran: {fields!r}"
            if msg_id in dead:
                assert dead[msg_id].strip(), f"an empty DLQ reason for {fields!r}"
                assert not must_run, f"a good entry was dead-lettered: {dead[msg_id]!r}"
                assert job_id not in runs or any(
                    f.get(b"id") == fields.get(b"id") for m, (f, _) in written.items()
                    if m != msg_id and m not in dead
                ), f"an entry both ran and died: {fields!r}"  # fmt: skip
            else:
                assert job_id in runs, f"entry neither ran nor died: {fields!r}"
                payload = json.loads(fields[b"payload"])
                assert runs[job_id] == [(payload["args"], payload["kwargs"])]
                accounted.add(job_id)
        assert accounted == set(runs), "a handler ran for an entry that was not written"
        info = await redis.xpending(stream, GROUP)
        assert int(info["pending"]) == 0
        (group,) = await redis.xinfo_groups(stream)
        assert group["last-delivered-id"] == max(
            written, key=lambda m: tuple(map(int, m.split(b"-")))
        )
        assert await redis.zcard(app.keys.delayed) == 0
        event(f"ran {len(runs)} of {len(written)}")
        await drop_queue(app)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(batch=st.lists(entries(), min_size=4, max_size=16))
async def test_random_entries_run_or_go_to_the_dlq_with_a_reason(
    redis_url: str, batch: list[tuple[dict[bytes, bytes], bool]]
) -> None:
    await check_batch(redis_url, batch)


@pytest.mark.chaos
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(batch=st.lists(entries(), min_size=1, max_size=40))
async def test_random_entries_at_scale(
    redis_url: str, batch: list[tuple[dict[bytes, bytes], bool]]
) -> None:
    await check_batch(redis_url, batch)
