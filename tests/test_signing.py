"""Signed entries (streamq.signing) and per-job caps (streamq.caps).

A worker with ``require_signatures`` runs only entries a key holder signed;
every path that re-writes an entry (retry, delayed set, DLQ requeue, chain
release, debounce, redrive) keeps the signature valid, because the scripts
copy signed fields verbatim and only ever change the unsigned ``attempt``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamq import App, Retry, Worker
from streamq.dlq import DeadLetters
from streamq.errors import ConfigError
from streamq.keys import GROUP
from streamq.replay import Replay
from streamq.settings import Settings
from streamq.signing import Signer, Verifier, canonical, signer_for, verifier_for
from tests.conftest import queue_name, running_worker

pytestmark = pytest.mark.anyio

K1 = b"k1-secret-0123456789abcdef"
K2 = b"k2-secret-0123456789abcdef"
FAST = {"janitor_interval_s": 0.05}


def settings(url: str, **changes: Any) -> Settings:
    return Settings(redis_url=url, **{**FAST, **changes})


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[App, App]]:
    """A producer signing with k1 and a worker App requiring signatures (k1, k2 accepted)."""
    name = queue_name()
    producer = App(name, settings=settings(redis_url, signing_keys={"k1": K1}, signing_key_id="k1"))
    worker = App(
        name,
        settings=settings(redis_url, signing_keys={"k1": K1, "k2": K2}, require_signatures=True),
    )
    async with producer, worker:
        yield producer, worker


def register(app: App, calls: list[Any], fail_first: int = 0) -> Any:
    @app.task(name="work", retry=Retry(intervals=(0.01,)), max_retries=3)
    async def work(n: int) -> int:
        calls.append(n)
        if len(calls) <= fail_first:
            raise RuntimeError("not yet")
        return n * 2

    return work


async def dead_reasons(app: App) -> list[str]:
    redis = await app.redis()
    return [f[b"dlq_reason"].decode() for _, f in await redis.xrange(app.keys.dlq)]


async def test_signed_entries_run_and_carry_kid_and_sig(pair: tuple[App, App]) -> None:
    producer, consumer = pair
    calls: list[Any] = []
    work = register(producer, [])
    register(consumer, calls)
    job = await work.enqueue(21)
    redis = await producer.redis()
    ((_, fields),) = await redis.xrange(producer.keys.stream("default"))
    assert fields[b"kid"] == b"k1" and len(fields[b"sig"]) == 64
    await Worker(consumer, burst=True).run()
    assert await job.result(timeout=2) == 42
    assert calls == [21]
    assert await dead_reasons(consumer) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"sig": None, b"kid": None}, "unsigned entry"),
        ({b"payload": b'{"args":[666],"kwargs":{}}'}, "bad signature"),
        ({b"max_retries": b"50"}, "bad signature"),  # a signed-absent field added
        ({b"kid": b"k9"}, "unknown signing key 'k9'"),
        ({b"sig": b"0" * 64}, "bad signature"),
        ({b"kid": None}, "bad signature"),
    ],
)
async def test_forged_entries_go_to_the_dlq_and_never_run(
    pair: tuple[App, App], change: dict[bytes, bytes | None], reason: str
) -> None:
    producer, consumer = pair
    calls: list[Any] = []
    work = register(producer, [])
    register(consumer, calls)
    await work.enqueue(1)
    redis = await producer.redis()
    stream = producer.keys.stream("default")
    ((msg_id, fields),) = await redis.xrange(stream)
    await redis.xdel(stream, msg_id)
    forged = {k: v for k, v in {**fields, **change}.items() if v is not None}
    await redis.xadd(stream, forged)  # type: ignore[arg-type]
    await Worker(consumer, burst=True).run()
    assert calls == []
    (got,) = await dead_reasons(consumer)
    assert got.startswith(reason)
    assert int((await redis.xpending(stream, GROUP))["pending"]) == 0


async def test_a_forged_copy_cannot_kill_the_job_it_names(pair: tuple[App, App]) -> None:
    """The DLQ path of an unverified entry leaves the job hash it names alone: else a
    forged entry naming a job's id would mark that job dead (queued: it never runs)."""
    producer, consumer = pair
    calls: list[Any] = []
    work = register(producer, [])
    register(consumer, calls)
    redis = await producer.redis()
    stream = producer.keys.stream("default")
    done = await work.enqueue(3)
    await Worker(consumer, burst=True).run()
    forged = {b"v": b"1", b"task": b"work", b"ct": b"json", b"payload": b"{}"}
    await redis.xadd(stream, {**forged, b"id": done.id.encode()})  # type: ignore[arg-type]
    queued_id = "queued-job-id"
    await redis.xadd(stream, {**forged, b"id": queued_id.encode()})  # type: ignore[arg-type]
    queued = await work.with_options(job_id=queued_id).enqueue(4)
    await Worker(consumer, burst=True, concurrency=1).run()
    assert calls == [3, 4]
    assert (await done.result(timeout=2), await queued.result(timeout=2)) == (6, 8)
    assert await dead_reasons(consumer) == ["unsigned entry"] * 2


async def test_a_worker_without_require_runs_unsigned_but_refuses_bad_signatures(
    redis_url: str,
) -> None:
    name = queue_name()
    plain = App(name, settings=settings(redis_url))
    checking = App(name, settings=settings(redis_url, signing_keys={"k1": K1}))
    async with plain, checking:
        calls: list[Any] = []
        work = register(plain, [])
        register(checking, calls)
        job = await work.enqueue(5)
        redis = await plain.redis()
        await redis.xadd(
            plain.keys.stream("default"),
            {b"v": b"1", b"id": b"forged", b"task": b"work", b"ct": b"json",
             b"payload": b'{"args":[6],"kwargs":{}}', b"kid": b"k1", b"sig": b"00"},
        )  # fmt: skip
        await Worker(checking, burst=True).run()
        assert await job.result(timeout=2) == 10
        assert calls == [5]
        assert await dead_reasons(checking) == ["bad signature"]


async def test_retries_keep_the_signature(pair: tuple[App, App]) -> None:
    producer, consumer = pair
    calls: list[Any] = []
    work = register(producer, [])
    register(consumer, calls, fail_first=2)
    job = await work.enqueue(4)
    async with running_worker(consumer):
        assert await job.result(timeout=10) == 8
    assert calls == [4, 4, 4]  # attempt 3 ran: the rewritten attempt field is not signed
    assert await dead_reasons(consumer) == []


async def test_scheduled_debounced_and_chained_jobs_stay_signed(pair: tuple[App, App]) -> None:
    producer, consumer = pair
    calls: list[Any] = []
    work = register(producer, [])
    register(consumer, calls)
    scheduled = await work.enqueue_in(0.05, 1)
    debounced = work.with_options(key="d", debounce=0.2)
    first = await debounced.enqueue(2)
    second = await debounced.enqueue(3)  # replaces the waiting job's arguments, re-signed
    assert second.id == first.id
    parent = await work.enqueue(4)
    child = await work.with_options(after=[parent]).enqueue(5)
    async with running_worker(consumer):
        assert await child.result(timeout=10) == 10
        assert await first.result(timeout=10) == 6
        assert await scheduled.result(timeout=10) == 2
    assert 2 not in calls and {3, 4, 5} <= set(calls)
    assert await dead_reasons(consumer) == []


async def test_dlq_requeue_and_redrive_keep_or_renew_the_signature(
    pair: tuple[App, App], redis_url: str
) -> None:
    producer, consumer = pair
    calls: list[Any] = []
    work = register(producer, [])
    register(consumer, calls)
    job = await work.enqueue(7)
    # A worker that does not know k1 dead-letters the job; requeued, it is the
    # same signed entry (attempt reset, not signed), which a k1 worker runs.
    stranger = App(
        producer.name,
        settings=settings(redis_url, signing_keys={"k2": K2}, require_signatures=True),
    )
    async with stranger:
        register(stranger, [])
        await Worker(stranger, burst=True).run()
    (dead,) = await DeadLetters(consumer).entries()
    assert dead.reason == "unknown signing key 'k1'"
    await DeadLetters(producer).requeue(dead.id)
    await Worker(consumer, burst=True).run()
    assert await job.result(timeout=2) == 14
    replay = Replay(producer)
    records = [r async for r in replay.messages() if r.fields.get("id") == job.id]
    (new_id, *_) = await replay.redrive(records[:1])  # a new job id: signed anew
    await Worker(consumer, burst=True).run()
    assert await producer.job(new_id).result(timeout=2) == 14
    assert calls == [7, 7]
    assert await DeadLetters(consumer).count() == 0


async def test_rotation_accepts_every_configured_key(redis_url: str) -> None:
    name = queue_name()
    old = App(name, settings=settings(redis_url, signing_keys={"k1": K1}, signing_key_id="k1"))
    new = App(name, settings=settings(redis_url, signing_keys={"k2": K2}, signing_key_id="k2"))
    worker = App(
        name,
        settings=settings(redis_url, signing_keys={"k1": K1, "k2": K2}, require_signatures=True),
    )
    only_old = App(
        name, settings=settings(redis_url, signing_keys={"k1": K1}, require_signatures=True)
    )
    async with old, new, worker, only_old:
        calls: list[Any] = []
        a = await register(old, []).enqueue(1)
        b = await (by_new := register(new, [])).enqueue(2)
        register(worker, calls)
        await Worker(worker, burst=True).run()
        assert (await a.result(timeout=2), await b.result(timeout=2)) == (2, 4)
        c = await by_new.enqueue(3)
        register(only_old, calls)
        await Worker(only_old, burst=True).run()
        assert await c.status() == "dead"
        assert await dead_reasons(only_old) == ["unknown signing key 'k2'"]


# -- caps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (b"timeout", b"1e9", "timeout 1e+09 s is over the cap of 86400 s"),
        (b"max_retries", b"1000000", "max_retries 1000000 is over the cap of 100"),
        (b"retry_intervals", b"[1, 1e12]", "a retry interval of 1e+12 s is over the cap"),
        (b"result_ttl", b"1e12", "result_ttl 1e+12 s is over the cap"),
    ],
)
async def test_entries_over_a_cap_go_to_the_dlq(
    app: App, field: bytes, value: bytes, reason: str
) -> None:
    calls: list[Any] = []
    register(app, calls)
    redis = await app.redis()
    await redis.xadd(
        app.keys.stream("default"),
        {b"v": b"1", b"id": b"capped", b"task": b"work", b"ct": b"json",
         b"payload": b'{"args":[1],"kwargs":{}}', field: value},
    )  # fmt: skip
    await Worker(app, burst=True).run()
    assert calls == []
    (got,) = await dead_reasons(app)
    assert got.startswith(reason)


async def test_enqueue_over_a_cap_is_a_config_error(app: App) -> None:
    work = register(app, [])
    for options in (
        {"timeout": 100_000.0},
        {"max_retries": 101},
        {"retry": Retry(intervals=(10 * 86_400.0,))},
        {"result_ttl": 60 * 86_400.0},
    ):
        with pytest.raises(ConfigError, match="over the cap"):
            await work.with_options(**options).enqueue(1)
    assert await (await app.redis()).exists(app.keys.stream("default")) == 0
    await work.with_options(timeout=3600.0, max_retries=100).enqueue(1)  # at the caps: fine


# -- settings ------------------------------------------------------------------------------


def test_settings_from_env_and_validation() -> None:
    b64 = base64.b64encode(K1).decode()
    env = {
        "STREAMQ_SIGNING_KEYS": f"k1:{b64}, k2:{base64.b64encode(K2).decode()}",
        "STREAMQ_SIGNING_KEY_ID": "k1",
        "STREAMQ_REQUIRE_SIGNATURES": "true",
    }
    s = Settings.from_env(env)
    assert s.signing_keys == {"k1": K1, "k2": K2}
    assert s.signing_key_id == "k1" and s.require_signatures
    assert "secret" not in repr(s) and b64 not in repr(s)
    for bad in (
        {"STREAMQ_SIGNING_KEYS": "k1"},
        {"STREAMQ_SIGNING_KEYS": "k1:not base64!"},
        {"STREAMQ_SIGNING_KEYS": f"k1:{b64}", "STREAMQ_SIGNING_KEY_ID": "k3"},
        {"STREAMQ_REQUIRE_SIGNATURES": "maybe"},
        {"STREAMQ_REQUIRE_SIGNATURES": "1"},  # required, but no key
    ):
        with pytest.raises(ConfigError):
            Settings.from_env(bad)
    for changes in (
        {"signing_keys": {"k1": b"short"}},
        {"signing_keys": {"k:1": K1}},
        {"max_job_timeout_s": 0},
        {"max_job_retries": -1},
        {"max_job_result_ttl_s": float("inf")},
    ):
        with pytest.raises(ConfigError):
            Settings(**changes)  # type: ignore[arg-type]


def test_signature_covers_every_signed_field_and_their_presence() -> None:
    signer = Signer("k1", K1)
    base = {b"v": b"1", b"id": b"j", b"task": b"t", b"ct": b"json", b"payload": b"{}"}
    sig = signer.sign(base).encode()
    verifier = Verifier({b"k1": K1}, required=True)
    entry = {**base, b"kid": b"k1", b"sig": sig, b"attempt": b"9", b"other": b"x"}
    assert verifier.reason(entry) is None  # attempt and unknown fields are not signed
    # Length prefixes: moving bytes between fields changes the signed bytes.
    assert canonical({b"v": b"1", b"id": b"ab"}) != canonical({b"v": b"1a", b"id": b"b"})
    for name in (b"v", b"id", b"task", b"ct", b"payload", b"enq_ms", b"timeout", b"headers"):
        assert verifier.reason({**entry, name: b"changed"}) == "bad signature"


def test_no_keys_no_verifier_no_signer() -> None:
    """Off unless configured: the worker's decode then skips verification entirely."""
    assert verifier_for({}, required=False) is None
    assert signer_for({"k1": K1}, None) is None
    assert App(queue_name(), settings=Settings(redis_url="redis://x")).signer is None
