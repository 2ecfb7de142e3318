"""Graceful shutdown on SIGTERM / SIGINT.

The first signal asks the worker to stop: it stops fetching, lets in-flight
jobs finish within the grace period, and leaves the rest pending for another
worker to reclaim. A second signal stops at once (still leaving unfinished
jobs pending: nothing is acked that did not run).
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import anyio

from streamq.logging import get_logger

if TYPE_CHECKING:
    from streamq.worker import Worker

SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def stop_on_signals(worker: Worker, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    log = get_logger(queue=worker.app.name, worker=worker.consumer)
    with anyio.open_signal_receiver(*SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if worker.stopping:
                log.warning("second signal: stopping now", signal=name)
                worker.stop(grace_s=0)
            else:
                log.info("signal: finishing in-flight jobs", signal=name, grace_s=worker.grace_s)
                worker.stop()
