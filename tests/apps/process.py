"""Running ``python -m streamq ...`` as a child process from an async test.

Both output pipes are read by background tasks into lists of lines, so a test
can wait for a log line (``wait_for_line``) while the child keeps running and
a chatty child never blocks on a full pipe. Whatever happens in the test, the
child is killed and reaped when the ``async with`` ends.
"""

from __future__ import annotations

import json
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
