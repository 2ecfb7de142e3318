"""A local Sentinel deployment for the tests: one master, one replica, three sentinels.

Every process is a ``valkey-server`` from the same binary the embedded default
uses (``streamq.embedded.find_binary``), on loopback ports: the sentinels run
it with ``--sentinel`` on a config file each writes to. Timings are small
(down-after 500 ms, failover-timeout 2 s) so a failover takes about a second.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis

from streamq.embedded import ValkeyServer, find_binary, ping
from tests.servers import free_port

SERVICE = "mymaster"
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 2000


def sentinel_id(port: int) -> str:
    """A fixed 40-hex-digit sentinel id per port, so each config can name the others."""
    return f"{port:040x}"


@dataclass
class SentinelProcess:
    """``valkey-server sentinel.conf --sentinel`` on a loopback port."""

    directory: Path
    port: int
    master_port: int
    known: list[tuple[int, str]] = field(default_factory=list)
    """(port, id) of the other sentinels, written into the config: no 2 s hello wait."""
    replica_ports: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
            f"sentinel myid {sentinel_id(self.port)}\n"
            + "".join(
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {port} {sentinel_id(port)}\n"
                for port in self.known
            )
            + "".join(
                f"sentinel known-replica {SERVICE} 127.0.0.1 {port}\n"
                for port in self.replica_ports
            )
        )
        self.process = subprocess.Popen(
            [str(find_binary()), str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not ping(port=self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sentinel on port {self.port} did not start")
            time.sleep(0.01)

    def kill(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


class SentinelDeployment:
    """A master, a replica of it and three sentinels watching them, under ``directory``."""

    def __init__(self, directory: Path, replicas: int = 1) -> None:
        # No 5 s wait before a full sync (the default repl-diskless-sync-delay).
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.master = ValkeyServer(directory / "master", port=free_port(), extra_args=fast_sync)
        self.replicas = [
            ValkeyServer(
                directory / f"replica{i}",
                port=free_port(),
                extra_args=[*fast_sync, "--replicaof", "127.0.0.1", str(self.master.port)],
            )
            for i in range(replicas)
        ]
        ports = [free_port() for _ in range(3)]
        self.sentinels = [
            SentinelProcess(
                directory / f"sentinel{i}", port, self.master.port or 0,
                known=[p for p in ports if p != port],
                replica_ports=[r.port or 0 for r in self.replicas],
            )
            for i, port in enumerate(ports)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    @property
    def servers(self) -> list[ValkeyServer]:
        return [self.master, *self.replicas]

    def start(self, timeout_s: float = 20.0) -> None:
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            sentinel.start()
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel deployment not ready within {timeout_s} s")
            time.sleep(0.05)
        with redis.Redis(port=self.master.port) as master:
            # A replica acknowledges its first offset about a second after syncing:
            # until then WAIT would time out, so the tests start once it did.
            master.set("sentinel-test:ready", 1)
            if master.wait(len(self.replicas), int(timeout_s * 1000)) < len(self.replicas):
                raise RuntimeError("the replicas did not acknowledge a write")
            master.delete("sentinel-test:ready")

    def ready(self) -> bool:
        """Every replica is in sync, and every sentinel sees the master, its replicas
        and the other sentinels."""
        with redis.Redis(port=self.master.port) as master:
            info = master.info("replication")
            if info.get("connected_slaves", 0) < len(self.replicas) or any(
                info.get(f"slave{i}", {}).get("state") != "online"
                for i in range(len(self.replicas))
            ):
                return False
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port) as client:
                state = client.sentinel_master(SERVICE)
                if state["num-slaves"] < len(self.replicas) or state["num-other-sentinels"] < 2:
                    return False
        return True

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers says now."""
        for sentinel in self.sentinels:
            with suppress(redis.RedisError), redis.Redis(port=sentinel.port) as client:
                _, port = client.sentinel_get_master_addr_by_name(SERVICE)
                return int(port)
        raise RuntimeError("no sentinel answered")

    def agree_on(self, port: int) -> bool:
        """Every sentinel names the master on ``port`` (a failover is over for all)."""
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port) as client:
                _, found = client.sentinel_get_master_addr_by_name(SERVICE)
                if int(found) != port:
                    return False
        return True

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in self.servers:
            with suppress(Exception):
                server.kill()


@contextmanager
def sentinel_deployment(directory: Path, replicas: int = 1) -> Iterator[SentinelDeployment]:
    deployment = SentinelDeployment(directory, replicas)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()
