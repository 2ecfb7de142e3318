"""Child processes for async tests: ``python -m streamq ...`` and other scripts.

Both output pipes are read by background tasks into lists of lines, so a test
can wait for a log line (``wait_for_line``) while the child keeps running and
a chatty child never blocks on a full pipe. Whatever happens in the test, the
child is killed and reaped when the ``async with`` ends. ``valkey_pids_serving``
finds valkey-servers left running for a data dir (they run in their own session,
so killing a child does not take them down).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, Process

ROOT = Path(__file__).resolve().parents[2]
"""The project root: the child's cwd, so ``tests.apps.*`` imports."""


@dataclass
class Child:
    process: Process
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait(self, timeout_s: float) -> int:
        """The exit code; fails the test if the child is still running after ``timeout_s``."""
        with anyio.move_on_after(timeout_s):
            return await self.process.wait()
        raise AssertionError(f"child {self.pid} still running after {timeout_s} s\n{self.output()}")

    async def close_stdin(self) -> None:
        """EOF on the child's stdin (children that wait for it then finish)."""
        if self.process.stdin is not None:
            await self.process.stdin.aclose()

    def records(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON (fails on a line that is not JSON)."""
        parsed = []
        for line in self.stdout:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"stdout line is not JSON: {line!r}") from None
        return parsed

    def output(self) -> str:
        return "--- stdout\n" + "\n".join(self.stdout) + "\n--- stderr\n" + "\n".join(self.stderr)

    async def wait_for_line(
        self, predicate: Callable[[str], bool], timeout_s: float, description: str
    ) -> str:
        with anyio.move_on_after(timeout_s):
            seen = 0
            while True:
                for line in self.stdout[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.stdout)
                if self.process.returncode is not None:
                    break
                await anyio.sleep(0.01)
        raise AssertionError(f"no stdout line {description} within {timeout_s} s\n{self.output()}")


def valkey_pids_serving(directory: Path) -> list[int]:
    """Pids of live valkey-servers whose data dir (their cwd) is ``directory``.

    valkey-server rewrites its command line, but it chdirs to ``--dir``: the
    cwd link in /proc (Linux) names the data dir reliably.
    """
    target = directory.resolve()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # redis-server too: STREAMQ_TEST_SERVER=redis7 runs every server on Redis 7.0.
            is_valkey = (entry / "comm").read_text().strip() in ("valkey-server", "redis-server")
            if is_valkey and Path(os.readlink(entry / "cwd")) == target:
                pids.append(int(entry.name))
        except OSError:
            continue  # exited meanwhile, or not ours to inspect
    return pids


async def _collect(stream: ByteReceiveStream | None, lines: list[str]) -> None:
    if stream is None:
        return
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        lines.extend(line.decode(errors="replace") for line in complete)
    if pending:
        lines.append(pending.decode(errors="replace"))


def streamq_child(
    args: Sequence[str], env: Mapping[str, str]
) -> AbstractAsyncContextManager[Child]:
    """``python -m streamq *args`` in the project root, killed on the way out."""
    return python_child(["-m", "streamq", *args], env)


@asynccontextmanager
async def python_child(
    args: Sequence[str], env: Mapping[str, str], *, stdin: int = subprocess.DEVNULL
) -> AsyncIterator[Child]:
    """``python *args`` in the project root, killed and reaped on the way out."""
    process = await anyio.open_process(
        [sys.executable, *args], cwd=ROOT, env=dict(env), stdin=stdin
    )
    child = Child(process)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_collect, process.stdout, child.stdout)
            tg.start_soon(_collect, process.stderr, child.stderr)
            try:
                yield child
            finally:
                with anyio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
