"""The exception tree: every error streamq raises on purpose.

::

    StreamqError
    ├── ConfigError            bad settings, App or task options (also a ValueError)
    │   └── UnknownPriorityError a priority name the App does not define
    ├── EnqueueError           enqueue refused; nothing was written
    │   ├── SerializationError arguments the serializer cannot encode (also a TypeError)
    │   ├── PayloadTooLarge    encoded arguments over ``max_payload_bytes``
    │   └── QueueFull          the queue already holds ``max_pending`` jobs
    ├── NotDurable             a durable enqueue's write was not confirmed by the replicas
    │                          in time; the jobs ARE enqueued (not rolled back)
    ├── ServerError            the Redis server cannot be used (the CLI exits 3)
    │   ├── ServerUnavailable  not reachable, no answer in time, or authentication
    │   │                      refused (also a redis ConnectionError)
    │   ├── ServerTooOld       older than Redis 7.0 (Valkey: any release)
    │   └── EmbeddedServerError the embedded valkey-server could not be found or started
    ├── WrongKeyType           a key of the queue holds another Redis type than streamq's
    │                          (also a redis ResponseError, as the WRONGTYPE it replaces)
    ├── JobNotFound            no job hash for that id (never enqueued, or expired)
    └── JobFailed              the handler failed; carries its error type, message, traceback
        ├── JobTimedOut        the handler ran past its timeout
        └── JobCancelled       the job was cancelled (``Job.cancel``, ``streamq cancel``)

``TimeoutError`` (the builtin) is raised by ``Job.result(timeout)`` when the job
is not finished in time, so callers can use one ``except`` for every timeout.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class StreamqError(Exception):
    """Base class of every error streamq raises on purpose."""


class ConfigError(StreamqError, ValueError):
    """Raised at the boundary (App, decorator, settings, CLI) for a bad option."""


class UnknownPriorityError(ConfigError):
    """Raised when a priority name is not one of the App's priorities."""

    def __init__(self, priority: str, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown priority {priority!r}; this app has {', '.join(known)}")
        self.priority = priority
        self.known = known


class EnqueueError(StreamqError):
    """Raised when an enqueue is refused before anything was written."""


class SerializationError(EnqueueError, TypeError):
    """Raised when a task's arguments cannot be encoded; names the task and argument."""

    def __init__(self, task: str, argument: str, reason: str) -> None:
        super().__init__(f"cannot serialize argument {argument} of task {task!r}: {reason}")
        self.task = task
        self.argument = argument


class PayloadTooLarge(EnqueueError):
    """Raised when a job's encoded arguments exceed ``max_payload_bytes``."""

    def __init__(self, task: str, size: int, limit: int) -> None:
        super().__init__(f"arguments of task {task!r} encode to {size} bytes; the limit is {limit}")
        self.task = task
        self.size = size
        self.limit = limit


class QueueFull(EnqueueError):
    """Raised when the queue already holds ``max_pending`` unfinished jobs.

    A web app turns this into 503. For ``enqueue_many``, ``accepted`` lists the
    jobs that did go in before the limit was reached (they stay queued).
    """

    def __init__(self, queue: str, depth: int, limit: int, accepted: list[Any]) -> None:
        super().__init__(f"queue {queue!r} holds {depth} pending jobs; max_pending is {limit}")
        self.queue = queue
        self.depth = depth
        self.limit = limit
        self.accepted = accepted


class ServerError(StreamqError):
    """The Redis server cannot be used: the CLI says why in one line and exits 3."""


class ServerUnavailable(ServerError, RedisConnectionError):
    """Raised on connecting when the server is not there, does not answer in time,
    or refuses the credentials. The message names the URL (password masked) and
    which of these it was. Also a redis ConnectionError, as what it replaces."""


class ServerTooOld(ServerError):
    """Raised on connecting to a server older than streamq needs (Redis 7.0).

    streamq's scripts declare their flags in a ``#!lua flags=`` first line,
    which older servers reject in every script call.
    """

    def __init__(self, url: str, found: str) -> None:
        super().__init__(f"streamq needs Redis 7.0+ or Valkey 7.2+; {url} runs {found}")
        self.url = url
        """The server's URL, password masked."""
        self.found = found
        """What the server reported, e.g. ``Redis 6.2.14``."""


class EmbeddedServerError(ServerError):
    """Raised when the embedded valkey-server cannot be found, started or reached."""


class WrongKeyType(StreamqError, ResponseError):
    """A key of the queue holds another Redis type than streamq writes there.

    Raised in place of Redis's WRONGTYPE (which names neither the key nor the
    type), at enqueue and in the worker, once streamq has found which key it
    is. Someone wrote the key by hand (SET on a stream's name, a list as the
    delayed set): ``streamq doctor`` lists every such key. It stays a
    ResponseError, so code that retries or logs Redis errors treats it as one.
    """

    def __init__(self, key: str, expected: str, actual: str) -> None:
        super().__init__(
            f"key {key!r} holds a {actual} where streamq keeps a {expected}: something "
            "else wrote it; rename or delete it (`streamq doctor` lists every such key)"
        )
        self.key = key
        self.expected = expected
        self.actual = actual

    def __repr__(self) -> str:
        # redis-py's errors repr as their category only ("server:ResponseError"),
        # and logs that use repr() should still name the key.
        return f"{type(self).__name__}({str(self)!r})"


class JobNotFound(StreamqError, LookupError):
    """Raised for a job id with no job hash (never enqueued, or its TTL expired)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} (never enqueued, or its result expired)")
        self.job_id = job_id


class JobFailed(StreamqError):
    """Raised by ``Job.result()`` when the handler failed.

    The original exception is not re-created: that would mean importing a class
    named by data in Redis. Its type name, message and traceback text are kept.
    """

    def __init__(self, job_id: str, error_type: str, message: str, traceback: str) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback


class JobTimedOut(JobFailed):
    """Raised by ``Job.result()`` when the handler ran past its timeout."""


class JobCancelled(JobFailed):
    """Raised by ``Job.result()`` for a cancelled job.

    A sync handler may raise it too, to stop cooperatively once its context
    says ``cancel_requested`` (``JobContext.raise_if_cancelled`` does that).
    """

    def __init__(self, job_id: str, message: str = "cancelled on request") -> None:
        super().__init__(job_id, "JobCancelled", message, "")


class NotDurable(StreamqError):
    """Raised by a durable enqueue (``Settings.durable``) whose write the replicas did
    not confirm in time (``WAIT``), or the master did not fsync (``WAITAOF``).

    The jobs ARE enqueued: nothing is rolled back, and they will run. What is not
    confirmed is that they would survive losing the master now (a failover
    promotes a replica that may not have them). Retrying the enqueue with the
    same ``job_id`` adds nothing twice (``job_ids`` are the ids to reuse).
    """

    def __init__(
        self,
        job_ids: list[str],
        replicas: int,
        wanted: int,
        timeout_s: float,
        local_fsync: bool | None = None,
    ) -> None:
        more = f" and {len(job_ids) - 3} more" if len(job_ids) > 3 else ""
        shown = ", ".join(job_ids[:3]) + more
        what = f"{replicas} of {wanted} replica{'' if wanted == 1 else 's'} confirmed"
        if local_fsync is False:
            what += ", and the master did not fsync its AOF,"
        super().__init__(
            f"job{'' if len(job_ids) == 1 else 's'} {shown} enqueued, but only {what} within "
            f"{timeout_s:g} s: {'it IS' if len(job_ids) == 1 else 'they ARE'} in the queue and "
            "will run (not rolled back), yet a failover now could lose "
            f"{'it' if len(job_ids) == 1 else 'them'}"
        )
        self.job_ids = job_ids
        self.replicas = replicas
        """How many replicas confirmed the write (WAIT's reply)."""
        self.wanted = wanted
        self.local_fsync = local_fsync
        """Whether the master fsynced (WAITAOF), None when not asked."""
