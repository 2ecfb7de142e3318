"""The live demo's data: what the web demo shows and the controls it offers.

``streamq demo --web`` runs a pool of demo worker processes on the embedded
server and lets a web page enqueue batches of jobs, size the pool, set each
job's latency, failure rate and hang rate (a hang freezes a whole worker
process while it holds its job), and watch hung jobs come back after the
visibility timeout, or at once with "reclaim now". The counters prove at
every moment that nothing is lost: enqueued = succeeded + dead + waiting +
in flight. The dashboard (``streamq.dashboard``) renders a ``DemoControl``;
``DemoPool`` is the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from streamq.demo_web.pool import DemoPool

JobState = Literal["waiting", "running", "succeeded", "retrying", "dead", "reclaimed"]
KINDS = ("email", "webhook", "thumbnail", "invoice")
PRIORITIES = ("high", "default", "low")


@dataclass(frozen=True, slots=True)
class DemoConfig:
    workers: int = 3
    """Worker processes in the pool (0 to 16)."""
    latency_ms: int = 300
    """How long each job works."""
    failure_rate: float = 0.1
    """The chance that an attempt raises (it is retried; dead once retries run out)."""
    hang_rate: float = 0.02
    """The chance that an attempt freezes its whole worker process while it holds the job."""
    visibility_timeout_s: float = 5.0
    """How long a hung worker's job waits before another worker reclaims it."""


@dataclass(frozen=True, slots=True)
class DemoJob:
    id: str
    kind: str
    priority: str
    state: JobState
    attempt: int
    worker: str | None
    """The consumer holding it, while it runs."""
    age_s: float


@dataclass(frozen=True, slots=True)
class DemoWorker:
    name: str
    pid: int
    state: Literal["running", "hung", "stopped", "starting"]
    in_flight: int


@dataclass(frozen=True, slots=True)
class DemoCounters:
    enqueued: int
    waiting: int
    """Queued, waiting for a retry's backoff, or reclaimable."""
    in_flight: int
    """Delivered and not yet recorded, including jobs held by hung workers."""
    succeeded: int
    dead: int
    retried: int
    reclaimed: int
    hung: int
    """Workers that hung so far."""

    @property
    def balanced(self) -> bool:
        """Nothing lost: every enqueued job is accounted for."""
        return self.enqueued == self.succeeded + self.dead + self.waiting + self.in_flight


@dataclass(frozen=True, slots=True)
class DemoSnapshot:
    config: DemoConfig
    counters: DemoCounters
    workers: list[DemoWorker]
    jobs: dict[JobState, list[DemoJob]]
    """The most recent jobs (up to 20) in each state."""


class DemoControl(Protocol):
    """What the dashboard's demo page needs from the demo."""

    kinds: tuple[str, ...]
    priorities: tuple[str, ...]

    async def snapshot(self) -> DemoSnapshot: ...

    async def configure(self, config: DemoConfig) -> None:
        """Resize the pool and change the rates (applies to attempts that start later)."""

    async def enqueue(self, kind: str, count: int, priority: str) -> int:
        """Enqueue ``count`` jobs of ``kind``; returns how many."""

    async def reclaim_now(self) -> int:
        """Hand every job held by a hung or dead worker to a live one now; returns how many."""

    async def reset(self) -> None:
        """Delete the demo queue's keys; the counters start from zero."""


def __getattr__(name: str) -> Any:
    # Lazily: streamq.demo_web.pool builds on the types above (no import cycle).
    if name == "DemoPool":
        from streamq.demo_web.pool import DemoPool

        return DemoPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KINDS",
    "PRIORITIES",
    "DemoConfig",
    "DemoControl",
    "DemoCounters",
    "DemoJob",
    "DemoPool",
    "DemoSnapshot",
    "DemoWorker",
    "JobState",
]
