"""Graceful shutdown on SIGTERM / SIGINT, with hard bounds.

The first signal asks the worker to stop: it stops fetching, lets in-flight
jobs finish within the grace period, cancels the rest and leaves them
pending for another worker to reclaim. A second signal stops at once (still
leaving unfinished jobs pending: nothing is acked that did not run).

Cancellation cannot stop every handler (one may shield itself, and a sync
handler's thread cannot be interrupted), so each signal also arms a
watchdog: if the process is still running a second after the grace period
(half a second after a second signal), it exits with 128 + the signal's
number. Jobs it cut off stay pending, so at-least-once still holds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

import anyio

from streamq.logging import get_logger

if TYPE_CHECKING:
    from streamq.worker import Worker

SIGNALS = (signal.SIGTERM, signal.SIGINT)
AFTER_GRACE_S = 0.75
AFTER_SECOND_S = 0.5


class Watchdog:
    """Ends the process with ``code`` unless ``cancel()`` comes first."""

    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    def arm(self, delay_s: float, code: int, log_event: str) -> None:
        self.cancel()
        self._timer = threading.Timer(delay_s, self._exit, args=(code, log_event))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @staticmethod
    def _exit(code: int, log_event: str) -> None:
        get_logger().error(log_event, exit_code=code)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed or broken pipe
                stream.flush()
        os._exit(code)


async def stop_on_signals(worker: Worker, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    log = get_logger(queue=worker.app.name, worker=worker.consumer)
    watchdog = worker.watchdog
    with anyio.open_signal_receiver(*SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            code = 128 + int(signum)
            if worker.stopping:
                log.warning("second signal: stopping now", signal=name)
                worker.exit_code = code
                watchdog.arm(AFTER_SECOND_S, code, "handlers ignored the second signal; exiting")
                worker.stop(grace_s=0)
            else:
                log.info("signal: finishing in-flight jobs", signal=name, grace_s=worker.grace_s)
                watchdog.arm(
                    worker.grace_s + AFTER_GRACE_S, code,
                    "handlers did not stop within the grace period; exiting",
                )  # fmt: skip
                worker.stop()
