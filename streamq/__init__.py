"""streamq: background jobs on Redis Streams consumer groups."""

from streamq.app import App
from streamq.dlq import DeadLetter, DeadLetterNotFound, DeadLetters
from streamq.errors import (
    ConfigError,
    EmbeddedServerError,
    EnqueueError,
    JobFailed,
    JobNotFound,
    JobTimedOut,
    PayloadTooLarge,
    SerializationError,
    StreamqError,
    UnknownPriorityError,
)
from streamq.job import Job, JobStatus
from streamq.logging import configure_logging
from streamq.retry import Retry
from streamq.serializers import JSONSerializer, Serializer
from streamq.settings import Settings
from streamq.task import Task, TaskOptions
from streamq.worker import Worker

__all__ = (
    "App",
    "ConfigError",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetters",
    "EmbeddedServerError",
    "EnqueueError",
    "JSONSerializer",
    "Job",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "JobTimedOut",
    "PayloadTooLarge",
    "Retry",
    "SerializationError",
    "Serializer",
    "Settings",
    "StreamqError",
    "Task",
    "TaskOptions",
    "UnknownPriorityError",
    "Worker",
    "configure_logging",
)
__version__ = "0.1.0"
