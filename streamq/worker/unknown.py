"""Messages whose task this worker does not know: hand them back, or give up.

Workers with different task sets may share a queue (or a rolling deploy is
half done): the message goes back through the delayed set with a doubling
backoff (``scripts/bounce.lua``), up to ``MAX_BOUNCES`` times. A hand-back is
not a delivery, so TooManyDeliveries never fires before a worker that knows
the task had its chance; past the limit the job is dead-lettered with the
likely cause.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

from streamq.app import App
from streamq.envelope import Envelope
from streamq.keys import GROUP
from streamq.worker.fetch import Message

MAX_BOUNCES = 12
"""Times a message whose task a worker does not know is handed back before the DLQ."""


def unknown_task_hint(name: str, known: Iterable[str]) -> str:
    """The likely cause of an unknown task name, and its fix."""
    short = name.rsplit(".", 1)[-1]
    alike = sorted(t for t in known if t.rsplit(".", 1)[-1] == short)
    here = f" (this worker registers {alike[0]!r})" if alike else ""
    if name.startswith("__main__."):
        return (
            f"the producer registered it as {name!r} because it ran its module as a "
            f"script; give the task an explicit name (@app.task(name=...)) or import it "
            f"from its module{here}"
        )
    if alike:
        return (
            f"this worker registers {alike[0]!r}: producer and worker import the handler "
            f"under different module names; give the task an explicit name"
        )
    return "no handler of that name is registered here: deploy a worker that has it"


async def hand_back(
    app: App, consumer: str, message: Message, env: Envelope, log: Any
) -> str | None:
    """Hand the message back; the reason to dead-letter it once past ``MAX_BOUNCES``."""
    settings = app.settings
    hint = unknown_task_hint(env.task, app.tasks)
    log = log.bind(
        job_id=env.job_id, task=env.task, attempt=env.attempt, duration_ms=0,
        deliveries=message.deliveries,
    )  # fmt: skip
    try:
        code, bounces, delay_ms = await (await app.scripts()).bounce(
            stream=message.stream, delayed=app.keys.delayed, events=app.keys.events,
            job_key=app.keys.job(env.job_id), group=GROUP, consumer=consumer,
            msg_id=message.msg_id, deliveries=message.deliveries, priority=message.priority,
            max_bounces=MAX_BOUNCES, base_delay_ms=int(settings.janitor_interval_s * 1000),
            max_delay_ms=int(min(60.0, settings.visibility_timeout_s) * 1000),
        )  # fmt: skip
    except RedisError as exc:
        log.error("unknown task; not handed back, it stays pending", error=str(exc))
        return None
    if code == 1:
        log.warning(
            "unknown task; handed back for a worker that knows it", bounces=bounces,
            max_bounces=MAX_BOUNCES, retry_in_ms=delay_ms, hint=hint,
        )  # fmt: skip
    elif code == -1:
        return f"no worker that knows task {env.task!r} took it in {MAX_BOUNCES} tries: {hint}"
    return None
