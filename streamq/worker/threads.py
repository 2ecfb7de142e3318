"""Threads for sync handlers: daemon threads that never hold the process open.

anyio's worker threads are not daemon threads, so a sync handler that runs
past its timeout or past the shutdown grace period would keep the process
alive (the interpreter joins them at exit) and its late result would be
lost anyway. Here each call runs on one of at most ``size`` daemon threads
(created on demand, reused after); the caller awaits ``SyncCall.wait()``,
which a cancellation abandons without touching the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

import anyio


class SyncCall:
    """One call on a handler thread: ``wait()`` returns once it has returned or raised."""

    __slots__ = ("_done", "_fn", "_context", "_loop", "value", "error", "finished")

    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self._fn = fn
        self._context = contextvars.copy_context()  # current_job() works in the thread
        self._loop = loop
        self._done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = False

    async def wait(self) -> None:
        await self._done.wait()

    def _run(self) -> None:
        try:
            self.value = self._context.run(self._fn)
        except BaseException as exc:  # the handler's failure is data for the caller
            self.error = exc
        self.finished = True
        # RuntimeError: the event loop is gone (the process is ending): nobody waits.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._done.set)


class HandlerThreads:
    """At most ``size`` daemon threads running sync handlers."""

    def __init__(self, size: int, name: str = "streamq-handler") -> None:
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[SyncCall | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, fn: Callable[[], Any]) -> SyncCall:
        call = SyncCall(fn, asyncio.get_running_loop())
        with self._lock:
            start = self._idle <= 0 and self._threads < self._size
            if start:
                self._threads += 1
            else:
                self._idle -= 1
        if start:
            threading.Thread(target=self._work, args=(call,), name=self._name, daemon=True).start()
        else:
            self._queue.put(call)
        return call

    def _work(self, call: SyncCall | None) -> None:
        while call is not None:
            call._run()
            with self._lock:
                self._idle += 1
            call = self._queue.get()
        with self._lock:
            self._threads -= 1

    def close(self) -> None:
        """Idle threads end; a thread still running a handler ends when it returns."""
        with self._lock:
            idle, self._idle = max(self._idle, 0), min(self._idle, 0)
        for _ in range(idle):
            self._queue.put(None)
