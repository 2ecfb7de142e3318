"""Scale-out on Redis Cluster: drain throughput on 1, 2 and 3 masters with a partitioned queue.

For each master count M it starts a local M-master Valkey cluster (127.0.0.1,
AOF off, slots split evenly; ``tests/cluster/server.py``), a queue with
``--partitions-per-master`` x M partitions, and bulk-enqueues ``--n`` no-op
jobs (spread round-robin over the partitions). Then it starts one worker
process per master, each assigned the partitions whose slot that master owns,
as a deployment that scales out with its cluster would::

    python -m streamq worker cluster_scale:app --partitions <those> --concurrency 100

The clock starts once every worker consumes and stops when no partition has a
job unread or pending; the rate counts the jobs done in between. The Redis CPU
per job is the masters' ``used_cpu_user + used_cpu_sys`` over that window,
summed, per job; the worker CPU per job is the workers' own (``/proc``).
Each setting runs ``--reps`` times and the median is kept.

On a machine with fewer cores than masters + workers, the processes share the
cores and the figures say where the machine, not the design, runs out: the
report prints the total CPU per job and the cores it implies at the measured
rate, and the rate the per-job costs predict for a machine with a core per
process.

    .venv/bin/python bench/cluster_scale.py                    # 1, 2, 3 masters
    .venv/bin/python bench/cluster_scale.py --masters 1 3 --n 10000 --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # tests.cluster.server: the cluster the tests start

from streamq import App  # noqa: E402
from tests.cluster.server import ValkeyCluster  # noqa: E402

QUEUE = "scale"
URL_ENV = "BENCH_CLUSTER_URL"
QUEUE_ENV = "BENCH_QUEUE"
PARTITIONS_ENV = "BENCH_PARTITIONS"
CHUNK = 1000
CONCURRENCY = 100
RESULTS = BENCH / "results"


async def noop() -> None:
    return None


def make_app(url: str, partitions: int, queue: str | None = None) -> App:
    name = queue or os.environ.get(QUEUE_ENV, QUEUE)
    application = App(name, redis_url=url, partitions=partitions)
    application.task(name="noop")(noop)
    return application


# The workers' App (``streamq worker cluster_scale:app``), configured by the parent.
app = make_app(
    os.environ.get(URL_ENV, "redis+cluster://127.0.0.1:7000"),
    int(os.environ.get(PARTITIONS_ENV, "1")),
)


def owners(cluster: ValkeyCluster, application: App, partitions: int) -> list[list[int]]:
    """Per master, the partitions whose slot it owns."""
    out: list[list[int]] = [[] for _ in cluster.ranges]
    for index in range(partitions):
        # Every key of a partition shares its hash tag, so any one gives its slot.
        slot = key_slot(application.partition(index).keys.events.encode())
        for master, (low, high) in enumerate(cluster.ranges):
            if low <= slot <= high:
                out[master].append(index)
    return out


def even_queue(cluster: ValkeyCluster, partitions: int) -> str:
    """A queue name whose partitions' hash tags spread evenly over the masters.

    CRC16 of a few tags rarely splits evenly (``scale`` with 6 partitions on 3
    masters gives 1/1/4): the busiest master would then bound the rate, which
    measures the name, not the design. Real deployments see the same effect;
    ``streamq doctor`` shows each partition's master.
    """
    for k in range(1000):
        name = f"{QUEUE}{k}"
        counts = [
            len(s) for s in owners(cluster, make_app(cluster.url, partitions, name), partitions)
        ]
        if max(counts) - min(counts) <= 1:
            return name
    return QUEUE


def cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process and its reaped children, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def backlog(client: RedisCluster, streams: list[str]) -> tuple[int, int]:
    """Jobs unread (lag) and pending, over every partition's streams."""
    lag = pending = 0
    for stream in streams:
        with suppress(redis.ResponseError):
            for group in client.xinfo_groups(stream):
                lag += int(group.get("lag") or 0)
                pending += int(group.get("pending") or 0)
    return lag, pending


def consumers(client: RedisCluster, streams: list[str]) -> int:
    names: set[bytes] = set()
    for stream in streams:
        with suppress(redis.ResponseError):
            names |= {c["name"] for c in client.xinfo_consumers(stream, "workers")}
    return len(names)


async def fill(url: str, partitions: int, queue: str, n: int) -> None:
    filler = make_app(url, partitions, queue)
    async with filler:
        task = filler.tasks["noop"]
        for start in range(0, n, CHUNK):
            await task.enqueue_many([()] * min(CHUNK, n - start))


def run_once(masters: int, per_master: int, n: int, work: Path) -> dict[str, Any]:
    partitions = masters * per_master
    cluster = ValkeyCluster(work, masters, extra_args=("--appendonly", "no"))
    cluster.start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        url = cluster.url
        queue = even_queue(cluster, partitions)
        local = make_app(url, partitions, queue)
        split = owners(cluster, local, partitions)
        streams = [
            local.partition(i).keys.stream(p)
            for i in range(partitions)
            for p in local.settings.priorities
        ]
        anyio.run(fill, url, partitions, queue, n)
        env = {**os.environ, URL_ENV: url, PARTITIONS_ENV: str(partitions), QUEUE_ENV: queue}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(BENCH), env.get("PYTHONPATH", "")])
        for assigned in split:
            if not assigned:
                continue
            argv = [
                sys.executable, "-m", "streamq", "worker", "cluster_scale:app",
                "--concurrency", str(CONCURRENCY), "--log-level", "warning",
                "--partitions", ",".join(map(str, assigned)),
            ]  # fmt: skip
            workers.append(subprocess.Popen(argv, cwd=BENCH, env=env, stdout=subprocess.DEVNULL))
        router = RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
        nodes = [redis.Redis(port=port) for port in cluster.ports]
        deadline = time.monotonic() + 60
        while consumers(router, streams) < len(workers):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start within 60 s")
            time.sleep(0.02)
        started = time.perf_counter()
        lag, pending = backlog(router, streams)
        left_at_start = lag + pending
        redis_cpu0 = sum(cpu_s(c) for c in nodes)
        worker_cpu0 = sum(proc_cpu_s(w.pid) for w in workers)
        last_report = started
        while True:
            lag, pending = backlog(router, streams)
            if lag + pending == 0:
                break
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"drain not done in 600 s: {lag} unread, {pending} pending")
            if time.perf_counter() - last_report > 5:
                last_report = time.perf_counter()
                print(f"  ... {masters} masters: {lag + pending} jobs left", flush=True)
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        redis_cpu = sum(cpu_s(c) for c in nodes) - redis_cpu0
        worker_cpu = sum(proc_cpu_s(w.pid) for w in workers) - worker_cpu0
        done = left_at_start
        router.close()
        for c in nodes:
            c.close()
        return {
            "masters": masters,
            "queue": queue,
            "partitions": partitions,
            "partitions_per_master": [len(s) for s in split],
            "workers": len(workers),
            "jobs": done,
            "seconds": elapsed,
            "rate": done / elapsed if elapsed else 0.0,
            "redis_us_per_job": redis_cpu / done * 1e6 if done else 0.0,
            "worker_us_per_job": worker_cpu / done * 1e6 if done else 0.0,
        }
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        cluster.stop()


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["rate"])
    middle = dict(runs[len(runs) // 2])
    middle["rates"] = [round(r["rate"]) for r in runs]
    return middle


def render(rows: list[dict[str, Any]], cores: int) -> str:
    lines = [
        "# Scale-out on Redis Cluster (`bench/cluster_scale.py`)",
        "",
        f"No-op jobs, one worker process per master (concurrency {CONCURRENCY}), "
        f"{cores} cores, medians of {len(rows[0]['rates'])} runs.",
        "",
        "| masters | partitions (per master) | jobs/s (runs) | Redis CPU µs/job "
        "| worker CPU µs/job | cores busy | predicted jobs/s, a core per process |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        busy = r["rate"] * (r["redis_us_per_job"] + r["worker_us_per_job"]) / 1e6
        # A core per master and per worker, each carrying its partitions' share of
        # the jobs: the busiest master or worker bounds the rate.
        share = max(r["partitions_per_master"]) / r["partitions"]
        slowest = max(r["redis_us_per_job"], r["worker_us_per_job"]) * share / 1e6
        predicted = 1 / slowest if slowest else 0.0
        spread = "/".join(map(str, r["partitions_per_master"]))
        lines.append(
            f"| {r['masters']} | {r['partitions']} ({spread}) "
            f"| {r['rate']:,.0f} ({', '.join(f'{x:,}' for x in r['rates'])}) "
            f"| {r['redis_us_per_job']:.1f} | {r['worker_us_per_job']:.1f} "
            f"| {busy:.2f} | {predicted:,.0f} |"
        )
    lines += ["", verdict(rows, cores)]
    return "\n".join(lines) + "\n"


def busy_cores(row: dict[str, Any]) -> float:
    return float(row["rate"] * (row["redis_us_per_job"] + row["worker_us_per_job"]) / 1e6)


def verdict(rows: list[dict[str, Any]], cores: int) -> str:
    """Where this machine runs out, and what the per-job costs predict beyond it."""
    full = next((r for r in rows if busy_cores(r) >= 0.85 * cores), None)
    costs = [r["redis_us_per_job"] for r in rows if r["redis_us_per_job"]]
    per_master = 1e6 / max(costs) if costs else 0.0  # the costliest run: a safe bound
    text = (
        f"One master's core bounds its partitions at about {per_master:,.0f} jobs/s "
        f"(1 s / its Redis CPU per job); with a core per master and per worker the rate "
        f"grows with the masters while the partitions spread evenly over them."
    )
    if full is None:
        return text + f" This machine ({cores} cores) did not run out of CPU in these runs."
    return (
        f"This machine runs out at {full['masters']} master(s): its {cores} cores are "
        f"{busy_cores(full):.2f} busy at {full['rate']:,.0f} jobs/s, so more masters and "
        f"workers only share the same cores. " + text
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masters", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--partitions-per-master", type=int, default=2)
    parser.add_argument("--n", type=int, default=20000, help="jobs per run (20000)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for cluster.md/.json")
    args = parser.parse_args(argv)
    rows = []
    for masters in args.masters:
        runs = []
        for rep in range(args.reps):
            print(f"{masters} master(s), run {rep + 1}/{args.reps} ...", flush=True)
            with tempfile.TemporaryDirectory(prefix="streamq-cluster-bench-") as tmp:
                runs.append(run_once(masters, args.partitions_per_master, args.n, Path(tmp)))
            last = runs[-1]
            print(
                f"  {last['rate']:,.0f} jobs/s, Redis {last['redis_us_per_job']:.1f} µs/job, "
                f"workers {last['worker_us_per_job']:.1f} µs/job",
                flush=True,
            )
        rows.append(median_run(runs))
    text = render(rows, os.cpu_count() or 1)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster.md").write_text(text)
    (args.out / "cluster.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
