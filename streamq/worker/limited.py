"""The worker's side of limits: admit a limited job, or hand it back; keep its slots.

Between decoding a job and running it, ``Limiter.admit`` asks Redis whether
the job's task (or its key value) may start: the rate script reserves a
slot in time (GCRA), the semaphore script a slot among the running. A job
that must wait goes back to the delayed set through ``scripts/defer.lua``
(fenced, acked, neither an attempt nor a delivery):

- for its rate, due at the slot reserved for it. It comes back at that slot
  and is admitted by the reservation (kept in its job hash), so a job is
  deferred at most once for rate and nothing polls.
- for concurrency, due after a backoff that doubles with each deferral
  (from the janitor interval up to the slot ttl, jittered), and parked: the
  next release of that semaphore makes it due at once. The cost: a job
  waiting for a slot is fetched and deferred once per release it wakes to
  (it may lose the slot to a job fetched meanwhile), plus once per backoff
  when no release comes, so a long queue behind a small semaphore costs a
  few script calls per job rather than none. The worker whose job woke a
  parked one promotes it at once (``streamq.promotion``), and a rate slot
  due before the janitor's next wake when it comes (``worker.soon``); the
  janitor, which wakes for the earliest due time, promotes the rest.

Tasks without limits cost nothing here: the worker only calls in for tasks
named in ``Limiter.policies``. Held slots are renewed every third of
``Settings.slot_ttl_s`` and released when the handler ends; a worker that
dies holding one loses it to expiry within the ttl.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from redis.exceptions import RedisError

from streamq.app import App
from streamq.envelope import Envelope
from streamq.keys import GROUP
from streamq.limits import LimitPolicy
from streamq.promotion import promote_due
from streamq.scripts import Arg, Started
from streamq.worker.fetch import Message

_RELEASE_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Held:
    """The slots one running job holds (none for a rate-only limit)."""

    holder: str
    slots: list[str] = field(default_factory=list)
    capacities: list[int] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)


class Limiter:
    def __init__(self, app: App, consumer: str, log: Any) -> None:
        self.app = app
        self.consumer = consumer
        self.on_delayed: Callable[[int], None] | None = None
        """Told how long (ms) each job it deferred waits (``worker.soon``)."""
        self.policies: dict[str, LimitPolicy] = {}
        for name, task in app.tasks.items():
            options = task.options
            policy = LimitPolicy.of(name, task.fn, options.limit, options.concurrency)
            if policy is not None:
                self.policies[name] = policy
        self.ttl_ms = int(app.settings.slot_ttl_s * 1000)
        self.deferred = 0
        self._held: dict[str, Held] = {}
        self._log = log

    def started(self, message: Message, env: Envelope) -> Started:
        """The "started" mark of an admitted job (limited jobs are marked only once admitted)."""
        return Started(
            message.stream, message.msg_id, self.app.keys.job(env.job_id), env.job_id,
            env.task, env.attempt, message.priority, message.deliveries,
        )  # fmt: skip

    async def admit(
        self, message: Message, env: Envelope, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Held | None:
        """The slots to release once the job ends, or None: it was handed back to wait."""
        policy = self.policies[env.task]
        keys, scripts = self.app.keys, await self.app.scripts()
        value = policy.value(args, kwargs)
        if policy.rate is not None:
            limit_key = keys.limit(env.task, value)
            allowed, slot_ms = await scripts.rate(
                limit_key=limit_key, job_key=keys.job(env.job_id),
                interval_us=policy.rate.interval_us, burst=policy.burst, attempt=env.attempt,
            )  # fmt: skip
            if not allowed:
                await self._defer(message, env, "rate", limit_key, due_ms=slot_ms)
                return None
        held = Held(f"{self.consumer}|{message.stream}|{message.msg_id.decode()}")
        if policy.task_concurrency is not None:
            held.slots.append(keys.slots(env.task))
            held.capacities.append(policy.task_concurrency)
            held.parked.append(keys.parked(env.task))
        if policy.key_concurrency is not None:
            held.slots.append(keys.slots(env.task, value))
            held.capacities.append(policy.key_concurrency)
            held.parked.append(keys.parked(env.task, value))
        if held.slots:
            full = await scripts.slot_acquire(held.slots, held.holder, self.ttl_ms, held.capacities)
            if full:
                await self._defer(
                    message, env, "concurrency", held.slots[full - 1],
                    parked=held.parked[full - 1],
                )  # fmt: skip
                return None
            self._held[held.holder] = held
        return held

    async def release(self, held: Held) -> None:
        """Give the job's slots back (shielded: a cancelled job frees them too)."""
        if not held.slots:
            return
        self._held.pop(held.holder, None)
        keys = self.app.keys
        with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_TIMEOUT_S):
            try:
                woken = await (await self.app.scripts()).slot_release(
                    events=keys.events, delayed=keys.delayed, slots=held.slots,
                    parked=held.parked, holder=held.holder,
                )  # fmt: skip
            except RedisError as exc:
                self._log.warning(
                    "concurrency slot not released; it frees after its ttl",
                    slots=held.slots, ttl_ms=self.ttl_ms, error=str(exc),
                )  # fmt: skip
                return
            if woken:
                # The woken job is due now: promote it here rather than leave it
                # to the janitor's next wake (one interval away at worst).
                try:
                    await promote_due(self.app, rounds=1)
                except RedisError as exc:
                    self._log.warning("woken job not promoted; the janitor will", error=str(exc))

    async def run(self) -> None:
        """Renew held slots every third of their ttl, so only a dead worker's expire."""
        while True:
            await anyio.sleep(self.ttl_ms / 3000)
            await self.renew()

    async def renew(self) -> None:
        held = list(self._held.values())
        if not held:
            return
        calls: list[tuple[str, tuple[Sequence[str], Sequence[Arg]]]] = [
            ("slot_acquire", (h.slots, [h.holder, self.ttl_ms, *h.capacities])) for h in held
        ]
        try:
            replies = await (await self.app.scripts()).run_many(calls)
        except RedisError as exc:
            self._log.warning("concurrency slots not renewed; retrying", error=str(exc))
            return
        for h, reply in zip(held, replies, strict=True):
            if reply != 0 and h.holder in self._held:
                # Expired while this worker could not renew (paused past the ttl),
                # and the slots were taken since: the job runs over the limit.
                self._log.warning(
                    "concurrency slot lost while its job runs", slots=h.slots,
                    error=str(reply) if isinstance(reply, Exception) else None,
                )  # fmt: skip

    async def _defer(
        self, message: Message, env: Envelope, reason: str, detail: str, *,
        due_ms: int = 0, parked: str | None = None,
    ) -> None:  # fmt: skip
        settings, keys = self.app.settings, self.app.keys
        code, due, deferrals, wait_ms = await (await self.app.scripts()).defer(
            stream=message.stream, delayed=keys.delayed, events=keys.events,
            job_key=keys.job(env.job_id), parked=parked, group=GROUP, consumer=self.consumer,
            msg_id=message.msg_id, deliveries=message.deliveries, priority=message.priority,
            reason=reason, due_ms=due_ms,
            base_delay_ms=max(10, int(settings.janitor_interval_s * 1000)),
            max_delay_ms=max(10, int(min(settings.slot_ttl_s, 60.0) * 1000)),
            jitter=random.random(), detail=detail,
        )  # fmt: skip
        log = self._log.bind(
            job_id=env.job_id, task=env.task, attempt=env.attempt, duration_ms=0,
            reason=reason, limit=detail,
        )  # fmt: skip
        if code == 1:
            self.deferred += 1
            log.debug("limited; deferred", due_ms=due, deferrals=deferrals)
            if self.on_delayed is not None:
                self.on_delayed(wait_ms)
        else:
            log.info("limited, and the message is no longer ours; not deferred")
