"""Audit at scale: replay, one job's story and the archive export over N jobs of history.

Starts its own valkey-server (127.0.0.1, AOF off), enqueues N no-op jobs in
two halves with one job that sleeps 1 s between them, and drains everything
with one in-process worker, so the history holds about 3N events, N job
messages and N job hashes. Then it measures, on that history:

- memory: the history streams' bytes per retained job (MEMORY USAGE) and the
  server's used_memory per job (job hashes included, while they live);
- ``Replay.events()``: events/s over the whole events stream;
- ``streamq replay APP``: JSON lines/s written by the CLI to a pipe;
- ``Replay.story()``: latency for the job that lived 1 s and for random no-op jobs;
- the archive: export of every history stream, entries/s and bytes per entry.

    .venv/bin/python bench/history.py --jobs 1000000      # about 10 minutes here
    .venv/bin/python bench/history.py --jobs 100000       # about 1 minute
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import structlog

from streamq import App, Worker
from streamq.archive import Archive
from streamq.embedded import ValkeyServer
from streamq.replay import Replay

QUEUE = "history"
STREAMQ = [sys.executable, "-m", "streamq"]
CHUNK = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def register(app: App) -> None:
    @app.task(name="noop")
    async def noop() -> None:
        return None

    @app.task(name="one_second")
    async def one_second() -> None:
        await anyio.sleep(1.0)


def progress(label: str, done: int, total: int, started: float) -> None:
    """One line per tenth of the work (the output is often a log, not a terminal)."""
    if done == total or done % max(1, total // 10) < CHUNK:
        rate = done / max(time.perf_counter() - started, 1e-9)
        print(f"  {label}: {done:,}/{total:,} ({rate:,.0f}/s)", flush=True)


async def build_history(app: App, jobs: int) -> tuple[str, list[str]]:
    """Enqueue and drain ``jobs`` no-op jobs around one 1 s job; its id and some others."""
    noop, one_second = app.tasks["noop"], app.tasks["one_second"]
    sample: list[str] = []
    lived_1s = ""
    for half in (0, 1):
        started = time.perf_counter()
        count = jobs // 2
        for start in range(0, count, CHUNK):
            batch = await noop.enqueue_many([()] * min(CHUNK, count - start))
            sample.append(random.choice(batch).id)
            progress(f"enqueue half {half + 1}", start + len(batch), count, started)
        if half == 1:  # high priority: it starts as the drain does, and lives 1 s in it
            lived_1s = (await one_second.with_options(priority="high").enqueue()).id
        started = time.perf_counter()
        worker = Worker(app, concurrency=100, burst=True)
        await worker.run()
        print(f"  drained half {half + 1} in {time.perf_counter() - started:.1f} s")
    return lived_1s, sample


async def measure(url: str, jobs: int, workdir: Path) -> dict[str, Any]:
    app = App(QUEUE, redis_url=url, result_ttl=7 * 86400)
    register(app)
    results: dict[str, Any] = {"jobs": jobs}
    async with app:
        redis = await app.redis()
        base = int((await redis.info("memory"))["used_memory"])
        lived_1s, sample = await build_history(app, jobs)
        used = int((await redis.info("memory"))["used_memory"]) - base
        history_keys = [app.keys.stream(p) for p in app.settings.priorities]
        history_keys += [app.keys.events, app.keys.dlq]
        history_bytes = 0
        for key in history_keys:
            history_bytes += int(await redis.memory_usage(key, samples=50) or 0)
        events = int(await redis.xlen(app.keys.events))
        results |= {
            "events": events,
            "history_bytes_per_job": round(history_bytes / jobs),
            "used_memory_bytes_per_job": round(used / jobs),
        }
        print(f"history: {events:,} events; {history_bytes / jobs:,.0f} B/job in the streams, "
              f"{used / jobs:,.0f} B/job of used_memory (job hashes included)")  # fmt: skip

        history = Replay(app)
        started, count = time.perf_counter(), 0
        async for _record in history.events():
            count += 1
        seconds = time.perf_counter() - started
        results["replay_events_per_s"] = round(count / seconds)
        print(f"Replay.events(): {count:,} in {seconds:.1f} s = {count / seconds:,.0f} events/s")

        results["story_1s_ms"] = await story_ms(history, lived_1s, repeat=5)
        # Once result_ttl has passed the hash (and its event index) is gone: the story
        # is read from the enqueue time in the job id to the job's final event.
        key = app.keys.job(lived_1s)
        saved = await redis.dump(key)
        await redis.delete(key)
        results["story_1s_expired_ms"] = await story_ms(history, lived_1s, repeat=5)
        await redis.restore(key, 0, saved)
        picked = random.sample(sample, min(200, len(sample)))
        noop_ms = [await story_ms(history, job_id, repeat=1) for job_id in picked]
        results["cli_story_ms"] = cli_story_ms(url, workdir, lived_1s)
        results["story_noop_ms"] = {
            "p50": round(statistics.median(noop_ms), 2),
            "p99": round(sorted(noop_ms)[int(len(noop_ms) * 0.99)], 2),
        }
        print(f"story: the job that lived 1 s: {results['story_1s_ms']} ms (best of 5), "
              f"{results['story_1s_expired_ms']} ms once its hash expired; "
              f"{len(noop_ms)} no-op jobs: p50 {results['story_noop_ms']['p50']} ms, "
              f"p99 {results['story_noop_ms']['p99']} ms")  # fmt: skip

        results["cli_lines_per_s"] = cli_lines_per_s(url, workdir, events)
        results |= await archive_export(app, workdir)
    return results


async def story_ms(history: Replay, job_id: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        story = await history.story(job_id)
        best = min(best, (time.perf_counter() - started) * 1000)
        assert story, f"no story for {job_id}"
    return round(best, 2)


def cli_env(url: str, workdir: Path) -> dict[str, str]:
    """An importable module with the App, for ``streamq replay history_app:app``."""
    module = workdir / "history_app.py"
    module.write_text(textwrap.dedent(f"""\
        from streamq import App
        app = App({QUEUE!r}, redis_url={url!r})
    """))  # fmt: skip
    return dict(os.environ, PYTHONPATH=str(workdir))


def cli_startup_s(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([*STREAMQ, "--version"], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def cli_story_ms(url: str, workdir: Path, job_id: str) -> float:
    """``streamq replay APP --job ID``, its process start-up (``--version``'s) excluded."""
    env = cli_env(url, workdir)
    startup = min(cli_startup_s(env) for _ in range(3))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([*STREAMQ, "replay", "history_app:app", "--job", job_id],
                       env=env, check=True, capture_output=True)  # fmt: skip
        best = min(best, time.perf_counter() - started)
    print(f"streamq replay --job: {best * 1000:.0f} ms wall, about "
          f"{(best - startup) * 1000:.0f} ms past the process start-up")  # fmt: skip
    return round((best - startup) * 1000, 1)


def cli_lines_per_s(url: str, workdir: Path, events: int) -> int:
    """``streamq replay`` of every event into a pipe (what `> file` or `| jq` sees)."""
    env = cli_env(url, workdir)
    streamq = STREAMQ
    startup = cli_startup_s(env)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*streamq, "replay", "history_app:app"], env=env, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    lines = sum(chunk.count(b"\n") for chunk in iter(lambda: proc.stdout.read(1 << 20), b""))
    proc.wait()
    seconds = time.perf_counter() - started - startup
    print(f"streamq replay: {lines:,} JSON lines in {seconds:.1f} s (start-up of "
          f"{startup:.1f} s excluded) = {lines / seconds:,.0f} lines/s")  # fmt: skip
    assert lines == events, (lines, events)
    return round(lines / seconds)


async def archive_export(app: App, workdir: Path) -> dict[str, Any]:
    """Every history stream into a fresh archive, as `streamq archive --all` does."""
    archive = Archive(workdir / "archive")
    redis = await app.redis()
    started, written = time.perf_counter(), 0
    for key in [*app.streams, app.keys.events, app.keys.dlq]:
        while True:
            result = await archive.export(redis, key, max_entries=200_000)
            written += result.entries
            if result.done:
                break
        progress("archive export", written, written, started)
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in (workdir / "archive").rglob("*.gz"))
    print(f"archive export: {written:,} entries in {seconds:.1f} s = {written / seconds:,.0f}/s, "
          f"{size / max(written, 1):,.1f} B/entry on disk")  # fmt: skip
    return {"archive_entries_per_s": round(written / seconds),
            "archive_bytes_per_entry": round(size / max(written, 1), 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="streamq-history-") as tmp:
        workdir = Path(tmp)
        server = ValkeyServer(workdir / "valkey", port=_free_port(),
                              extra_args=["--appendonly", "no"])  # fmt: skip
        server.start()
        try:
            results = anyio.run(measure, server.url, args.jobs, workdir)
        finally:
            server.stop()
    print(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
