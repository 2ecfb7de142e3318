"""Several worker processes under one supervisor: ``streamq worker APP --processes N``.

The supervisor runs no jobs and does not import the App: it starts N
children, ``python -m streamq worker APP ... --name <base>-<i>``, each its
own consumer, and watches them.

- **Names.** Child *i* is always ``<base>-<i>`` (``--name`` or a fresh
  ``host:pid:random``), so a restarted child drains its predecessor's pending
  messages first instead of leaving them to a reclaim.
- **Ready.** A child writes one byte to a pipe (``--supervisor-fd``) once its
  worker runs (App loaded, Redis reached, groups made).
- **Restarts.** A child that exits while the supervisor is not stopping (in
  burst mode: with a code other than 0) is restarted after a backoff that
  doubles with each quick crash (``RESTART_BASE_S`` up to ``RESTART_CAP_S``;
  a child that ran ``STABLE_S`` starts the count again), with a log line.
- **Failing to start.** A child that exits before it is ready fails the
  supervisor at once (the others are stopped, the exit code is the child's)
  if no child was ever ready, or if its code is 2 (bad usage or
  configuration: retrying cannot help). Later, say while Redis restarts, a
  child gets ``MAX_FAILED_STARTS`` tries before the supervisor gives up.
- **Signals.** SIGTERM/SIGINT are passed to every child, which finishes its
  in-flight jobs within ``--grace`` (its own watchdog exits with 128 + the
  signal after that); a child still running ``KILL_AFTER_S`` later is
  SIGKILLed. A second signal is passed on too: children stop at once. The
  children run in their own process group, so a terminal's Ctrl-C reaches
  them once, through the supervisor. A child whose supervisor vanished
  (SIGKILL) stops by itself (``ChildLink``).
- **Exit code.** 0 when every child ended cleanly (a shutdown, or a drained
  queue with ``--burst``); 128 + the signal after a second signal; otherwise
  the code of the first child that failed (a child killed by a signal counts
  as 128 + that signal, so a straggler killed at the deadline is 137).

Every child runs the janitor's duties unless ``--no-janitor``: a lease keeps
one leader per queue anyway, and any survivor takes over when it dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

from streamq.logging import get_logger
from streamq.worker.shutdown import AFTER_GRACE_S, AFTER_SECOND_S, SIGNALS

READY_FD_OPTION = "--supervisor-fd"
EXIT_USAGE = 2
RESTART_BASE_S = 0.5
RESTART_CAP_S = 30.0
STABLE_S = 30.0
MAX_FAILED_STARTS = 5
KILL_AFTER_S = 2.0
"""How long after a child's own watchdog (grace + AFTER_GRACE_S) it is SIGKILLed."""
POLL_S = 0.05
PARENT_POLL_S = 1.0


class ProcessObserver(Protocol):
    """What the supervisor reports to its metrics (``streamq.metrics.ProcessesMetrics``)."""

    def restarted(self) -> None: ...

    def exited(self, pid: int) -> None: ...


def exit_code(returncode: int) -> int:
    """A process's exit code as a shell shows it: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def restart_delay(crashes: int) -> float:
    """Backoff before restarting after the ``crashes``-th quick crash in a row (1, 2, ...)."""
    return min(RESTART_BASE_S * 2.0 ** max(crashes - 1, 0), RESTART_CAP_S)


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    ready_fd: int
    started: float
    ready: bool = False
    killed: bool = False

    def poll_ready(self) -> None:
        if self.ready or self.ready_fd < 0:
            return
        try:
            data = os.read(self.ready_fd, 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.ready = True
        self.close_fd()

    def close_fd(self) -> None:
        if self.ready_fd >= 0:
            os.close(self.ready_fd)
            self.ready_fd = -1


@dataclass
class _Slot:
    index: int
    name: str
    child: _Child | None = None
    restart_at: float | None = None
    crashes: int = 0
    failed_starts: int = 0
    done: bool = False


class Supervisor:
    """Runs ``worker_argv + ["--name", name]`` once per name until stopped; see the module."""

    def __init__(
        self,
        worker_argv: Sequence[str],
        names: Sequence[str],
        *,
        grace_s: float,
        burst: bool = False,
        env: Mapping[str, str] | None = None,
        observer: ProcessObserver | None = None,
    ) -> None:
        if not names:
            raise ValueError("a supervisor needs at least one process")
        self.worker_argv = list(worker_argv)
        self.grace_s = grace_s
        self.burst = burst
        self.env = dict(os.environ if env is None else env)
        self.observer = observer
        self.exit_code = 0
        self.stopping = False
        self._slots = [_Slot(i, name) for i, name in enumerate(names)]
        self._signals: list[int] = []
        self._any_ready = False
        self._kill_at: float | None = None
        self._log = get_logger(supervisor=os.getpid())

    def run(self) -> int:
        """Start the children, supervise them until they are all done; the exit code."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in SIGNALS}
        try:
            self._log.info(
                "supervisor started", processes=len(self._slots), grace_s=self.grace_s,
                burst=self.burst,
            )  # fmt: skip
            for slot in self._slots:
                self._start(slot)
            while not self._finished():
                self._step(time.monotonic())
                time.sleep(POLL_S)
        finally:
            self._reap_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self._log.info("supervisor stopped", exit_code=self.exit_code)
        return self.exit_code

    # -- the loop ------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _finished(self) -> bool:
        return all(s.child is None and (s.done or self.stopping) for s in self._slots)

    def _step(self, now: float) -> None:
        while self._signals:
            self._signalled(self._signals.pop(0), now)
        for slot in self._slots:
            child = slot.child
            if child is not None:
                child.poll_ready()
                if child.ready:
                    self._any_ready = True
                returncode = child.process.poll()
                if returncode is not None:
                    self._exited(slot, child, exit_code(returncode), now)
            elif slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                slot.restart_at = None
                if self.observer is not None:
                    self.observer.restarted()
                self._start(slot)
        if self._kill_at is not None and now >= self._kill_at:
            self._kill_stragglers()

    def _start(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                [*self.worker_argv, "--name", slot.name, READY_FD_OPTION, str(write_fd)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                pass_fds=(write_fd,),
                process_group=0,  # a terminal's Ctrl-C reaches the children through us only
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        slot.child = _Child(process, read_fd, time.monotonic())
        self._log.info("worker process started", slot=slot.index, pid=process.pid, name=slot.name)

    def _exited(self, slot: _Slot, child: _Child, code: int, now: float) -> None:
        child.poll_ready()  # it may have been ready just before it ended
        child.close_fd()
        self._any_ready |= child.ready
        slot.child = None
        pid = child.process.pid
        if self.observer is not None:
            self.observer.exited(pid)
        fields = {"slot": slot.index, "pid": pid, "exit_code": code}
        if self.stopping:
            # Before it was ready it held no job: however it ended is clean.
            failed = child.killed or (child.ready and code != 0)
            if failed and self.exit_code == 0:
                self.exit_code = code
            (self._log.warning if failed else self._log.info)("worker process exited", **fields)
            return
        if self.burst and code == 0:
            slot.done = True
            self._log.info("worker process exited", **fields)
            return
        if not child.ready:
            slot.failed_starts += 1
            if not self._any_ready or code == EXIT_USAGE:
                self._fail(code, "worker process failed to start", fields)
                return
            if slot.failed_starts >= MAX_FAILED_STARTS:
                self._fail(
                    code, "worker process failed to start again; giving up",
                    {**fields, "attempts": slot.failed_starts},
                )  # fmt: skip
                return
            crashes = slot.failed_starts
        else:
            slot.failed_starts = 0
            slot.crashes = 1 if now - child.started >= STABLE_S else slot.crashes + 1
            crashes = slot.crashes
        delay = restart_delay(crashes)
        slot.restart_at = now + delay
        self._log.warning("worker process exited; restarting", **fields, restart_in_s=delay)

    def _fail(self, code: int, event: str, fields: Mapping[str, object]) -> None:
        self._log.error(event, **fields)
        if self.exit_code == 0:
            self.exit_code = code or 1
        self._stop(signal.SIGTERM, time.monotonic())

    def _signalled(self, signum: int, now: float) -> None:
        name = signal.Signals(signum).name
        if not self.stopping:
            self._log.info("signal: stopping worker processes", signal=name, grace_s=self.grace_s)
            self._stop(signum, now)
            return
        self._log.warning("second signal: stopping worker processes now", signal=name)
        self.exit_code = 128 + signum
        self._send(signum)
        deadline = now + AFTER_SECOND_S + KILL_AFTER_S
        self._kill_at = deadline if self._kill_at is None else min(self._kill_at, deadline)

    def _stop(self, signum: int, now: float) -> None:
        self.stopping = True
        for slot in self._slots:
            slot.restart_at = None
        self._send(signum)
        self._kill_at = now + self.grace_s + AFTER_GRACE_S + KILL_AFTER_S

    def _send(self, signum: int) -> None:
        for slot in self._slots:
            if slot.child is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.child.process.send_signal(signum)

    def _kill_stragglers(self) -> None:
        self._kill_at = None
        for slot in self._slots:
            child = slot.child
            if child is not None and child.process.poll() is None:
                self._log.error(
                    "worker process outlived the grace period; killing it",
                    slot=slot.index, pid=child.process.pid,
                )  # fmt: skip
                child.killed = True
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()

    def _reap_all(self) -> None:
        """Never leave a child behind, whatever ended the loop (an exception included)."""
        for slot in self._slots:
            child = slot.child
            if child is None:
                continue
            if child.process.poll() is None:
                child.process.kill()
            child.process.wait()
            child.close_fd()
            slot.child = None
            if self.observer is not None:
                self.observer.exited(child.process.pid)


class ChildLink:
    """The child's side of the supervisor: ready byte, whole-line output, orphan check.

    ``start()`` calls ``whole_line_output()`` and starts a thread that
    SIGTERMs this process if its supervisor is gone. ``ready()`` tells the
    supervisor that the worker runs.
    """

    def __init__(self, ready_fd: int) -> None:
        self.ready_fd = ready_fd
        self.parent = os.getppid()
        self._orphan = threading.Lock()

    def start(self) -> None:
        whole_line_output()
        threading.Thread(target=self._watch_parent, name="streamq-supervisor", daemon=True).start()

    def ready(self) -> None:
        try:
            os.write(self.ready_fd, b"r")
        except OSError:  # the supervisor is gone (EPIPE) or the fd is wrong
            self._orphaned()
        finally:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)

    def _watch_parent(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(PARENT_POLL_S)
        self._orphaned()

    def _orphaned(self) -> None:
        if self._orphan.acquire(blocking=False):  # once: a second SIGTERM would stop at once
            get_logger().warning("the supervisor is gone: stopping")
            os.kill(os.getpid(), signal.SIGTERM)


def whole_line_output() -> None:
    """Make stdout and stderr write each line with one ``write``.

    The supervisor and its children share one output; with
    ``PYTHONUNBUFFERED`` a ``print`` is two writes (the text, then the
    newline), and another process's line can land between them. Line
    buffering without write-through hands the whole line down at once (a
    pipe keeps writes up to 4 KiB whole).
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(line_buffering=True, write_through=False)
