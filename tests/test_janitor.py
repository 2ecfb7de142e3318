"""The janitor: a leader lease for its singleton duties, and pruning dead consumers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from streamq import App, Settings
from streamq.janitor import Janitor
from streamq.keys import GROUP
from streamq.lease import Lease
from streamq.worker.fetch import Fetcher
from tests.conftest import assert_no_key_leak, queue_name, wait_until

pytestmark = pytest.mark.anyio

INTERVAL_S = 0.05


@pytest.fixture
async def fast_app(redis_url: str) -> AsyncIterator[App]:
    application = App(
        queue_name(),
        redis_url=redis_url,
        settings=Settings(janitor_interval_s=INTERVAL_S, consumer_idle_s=0.2),
    )

    @application.task(name="t")
    async def t() -> None: ...

    async with application:
        yield application
        await assert_no_key_leak(application)


async def lock_holder(app: App) -> str | None:
    redis = await app.redis()
    raw = await redis.get(app.keys.lock("janitor"))
    return None if raw is None else raw.decode().rsplit(":", 1)[0]


# -- the lease --------------------------------------------------------------------------


async def test_lease_has_one_holder_and_expires_when_not_renewed(fast_app: App) -> None:
    """One token holds the lease; another gets it only once the holder stops renewing.

    While "a" renews, "b" is refused every time. When "a" stops, "b" gets
    the lease no earlier than the TTL after a's last renewal (the key's
    PX expiry), and "a" learns it lost the lease at its next renewal. A's
    release afterwards must not delete b's lease (the token check).
    """
    scripts = await fast_app.scripts()
    key = fast_app.keys.lock("janitor")
    a = Lease(scripts, key, ttl_s=0.3, owner="a")
    b = Lease(scripts, key, ttl_s=0.3, owner="b")
    assert await a.acquire_or_renew()
    for _ in range(5):
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()
    last_renewal = time.monotonic()

    await wait_until(b.acquire_or_renew, 5, "b to take the expired lease")
    assert time.monotonic() - last_renewal >= 0.25  # PX 300 ms, minus clock slack
    assert not await a.acquire_or_renew()
    assert not a.held and b.held
    await a.release()
    assert await lock_holder(fast_app) == "b"
    await b.release()
    assert await lock_holder(fast_app) is None


async def test_concurrent_acquires_grant_the_lease_once(fast_app: App) -> None:
    """Ten contenders racing for a free lease: exactly one wins each round."""
    scripts = await fast_app.scripts()
    key = fast_app.keys.lock("janitor")
    leases = [Lease(scripts, key, ttl_s=5, owner=f"c{i}") for i in range(10)]

    async def contend(lease: Lease, won: list[bool]) -> None:
        won.append(await lease.acquire_or_renew())

    for _ in range(20):
        won: list[bool] = []
        async with anyio.create_task_group() as tg:
            for lease in leases:
                tg.start_soon(contend, lease, won)
        assert won.count(True) == 1
        (winner,) = [lease for lease in leases if lease.held]
        await winner.release()


async def test_only_the_lease_holder_promotes_and_another_janitor_takes_over(
    fast_app: App, redis_url: str
) -> None:
    """Two janitors run side by side; only the lease holder does the work.

    Janitor A takes the lease and promotes due jobs; janitor B, polling every
    0.05 s all the while, promotes none. When A stops (releasing the lease),
    B takes over and promotes the next due job. Without the lease both would
    promote (the promote script would keep that safe, but every singleton
    duty would run twice).
    """
    other = App(fast_app.name, redis_url=redis_url, settings=fast_app.settings)
    a, b = Janitor(fast_app, "janitor-a"), Janitor(other, "janitor-b")
    t = fast_app.tasks["t"]
    async with other, anyio.create_task_group() as tg:
        a_scope = anyio.CancelScope()
        tg.start_soon(_run_in, a_scope, a)
        await wait_until(
            lambda: _holder_is(fast_app, "janitor-a"), 5, "janitor A to take the lease"
        )
        tg.start_soon(b.run)
        for _ in range(3):
            await t.enqueue_in(0.01)
        await wait_until(lambda: a.promoted == 3, 5, "janitor A to promote three jobs")
        assert b.promoted == 0
        a_scope.cancel()
        await wait_until(lambda: _holder_is(fast_app, "janitor-b"), 5, "janitor B to take over")
        await t.enqueue_in(0.01)
        await wait_until(lambda: b.promoted == 1, 5, "janitor B to promote")
        assert a.promoted == 3
        tg.cancel_scope.cancel()
    assert await lock_holder(fast_app) is None  # B released it on the way out
    await _run_queued_jobs(fast_app)


async def test_a_janitor_waits_out_a_dead_holders_lease(fast_app: App) -> None:
    """A holder that died without releasing blocks others only until its TTL.

    A lease taken with a 0.5 s TTL and never renewed (the holder "died")
    keeps janitor B from promoting a job that is already due; B promotes it
    once the lease has expired, not before.
    """
    scripts = await fast_app.scripts()
    dead = Lease(scripts, fast_app.keys.lock("janitor"), ttl_s=0.5, owner="dead")
    assert await dead.acquire_or_renew()
    expires = time.monotonic() + 0.5
    await fast_app.tasks["t"].enqueue_in(0.01)
    b = Janitor(fast_app, "janitor-b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        await wait_until(lambda: b.promoted == 1, 5, "janitor B to promote after the expiry")
        assert time.monotonic() >= expires - 0.05
        tg.cancel_scope.cancel()
    await _run_queued_jobs(fast_app)


async def _run_in(scope: anyio.CancelScope, janitor: Janitor) -> None:
    with scope:
        await janitor.run()


async def _holder_is(app: App, owner: str) -> bool:
    return await lock_holder(app) == owner


async def _run_queued_jobs(app: App) -> None:
    """Run the promoted jobs, so their hashes end final (with a TTL)."""
    from streamq import Worker

    with anyio.fail_after(10):
        await Worker(app, janitor=False, burst=True).run()


# -- pruning consumers ----------------------------------------------------------------


async def consumers(redis: Redis, stream: str) -> dict[str, dict[str, Any]]:
    return {c["name"].decode(): c for c in await redis.xinfo_consumers(stream, GROUP)}


async def test_prune_removes_idle_empty_consumers_and_never_one_with_pending(
    fast_app: App,
) -> None:
    """Idle consumers with an empty PEL are removed; one holding a message never is.

    ``consumer_idle_s`` is 0.2 s. "gone" (idle, nothing pending) is removed.
    "busy" is just as idle but holds a message: XGROUP DELCONSUMER would drop
    that message from the PEL (silent loss), so it stays, with its entry.
    "fresh" (just seen) and the janitor's own consumer (idle too) stay. A
    prune that checked idle time alone would delete "busy" and its entry.
    """
    redis = await fast_app.redis()
    stream = fast_app.keys.stream("default")
    job = await fast_app.tasks["t"].enqueue()
    fetcher = Fetcher(
        redis, await fast_app.scripts(), fast_app.keys, fast_app.settings, "busy", 100
    )
    await fetcher.ensure_groups()
    (held,) = await fetcher.fetch(1)
    for name in ("gone", "me"):
        await redis.xgroup_createconsumer(stream, GROUP, name)

    async def all_idle() -> bool:
        found = await consumers(redis, stream)
        return all(found[n]["idle"] >= 250 for n in ("gone", "me", "busy"))

    await wait_until(all_idle, 5, "the consumers to be idle past consumer_idle_s")
    await redis.xgroup_createconsumer(stream, GROUP, "fresh")
    # Valkey (and Redis 7.2+) registers a consumer on a read that finds nothing;
    # Redis 7.0 does not, so there "busy" never appears on the empty high stream.
    registered_on_high = "busy" in await consumers(redis, fast_app.keys.stream("high"))

    removed = await Janitor(fast_app, "me").remove_idle_consumers()
    # "busy" goes too, but only from the high stream: its fetch looked there first
    # (registering it), found nothing, and it holds nothing there.
    assert sorted(removed) == (["busy", "gone"] if registered_on_high else ["gone"])
    assert set(await consumers(redis, fast_app.keys.stream("high"))) == set()
    assert set(await consumers(redis, stream)) == {"busy", "me", "fresh"}
    (entry,) = await redis.xpending_range(stream, GROUP, "-", "+", 10)
    assert (entry["message_id"], entry["consumer"]) == (held.msg_id, b"busy")
    assert await Janitor(fast_app, "me").remove_idle_consumers() == []
    await redis.xack(stream, GROUP, held.msg_id)
    await redis.expire(fast_app.keys.job(job.id), 60)
