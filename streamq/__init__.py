"""streamq: background jobs on Redis Streams consumer groups."""

from streamq.app import App
from streamq.cancel import CancelResult, empty_queue
from streamq.delayed import RunNowResult
from streamq.details import JobDetails
from streamq.dlq import (
    DeadLetter,
    DeadLetterNotFound,
    DeadLetters,
    JobIdReused,
    RequeueRefused,
)
from streamq.errors import (
    ConfigError,
    EmbeddedServerError,
    EnqueueError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimedOut,
    NotDurable,
    PayloadTooLarge,
    QueueFull,
    SerializationError,
    ServerError,
    ServerTooOld,
    ServerUnavailable,
    StreamqError,
    UnknownPriorityError,
    WrongKeyType,
)
from streamq.job import Job, JobProgress, JobStatus, JobUpdate
from streamq.lifespan import LifespanError
from streamq.limits import Limit
from streamq.logging import configure_logging
from streamq.middleware import Middleware
from streamq.progress import JobContext, current_job, progress, progress_sync
from streamq.retry import Retry
from streamq.serializers import JSONSerializer, Serializer
from streamq.settings import Settings
from streamq.task import Task, TaskOptions
from streamq.worker import Worker

__all__ = (
    "App",
    "CancelResult",
    "ConfigError",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetters",
    "EmbeddedServerError",
    "EnqueueError",
    "JSONSerializer",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobDetails",
    "JobFailed",
    "JobIdReused",
    "JobNotFound",
    "JobProgress",
    "JobStatus",
    "JobTimedOut",
    "JobUpdate",
    "LifespanError",
    "Limit",
    "Middleware",
    "NotDurable",
    "PayloadTooLarge",
    "QueueFull",
    "RequeueRefused",
    "Retry",
    "RunNowResult",
    "SerializationError",
    "Serializer",
    "ServerError",
    "ServerTooOld",
    "ServerUnavailable",
    "Settings",
    "StreamqError",
    "Task",
    "TaskOptions",
    "UnknownPriorityError",
    "Worker",
    "WrongKeyType",
    "configure_logging",
    "current_job",
    "empty_queue",
    "progress",
    "progress_sync",
)
__version__ = "0.1.0"
