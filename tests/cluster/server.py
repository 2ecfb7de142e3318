"""A local Valkey cluster for the tests (and ``bench/cluster_scale.py``): three masters
by default, slots assigned here, no replicas.

Each node is a ``valkey-server`` from the same binary the embedded default
uses, in cluster mode on a loopback port. The fixture assigns the 16384 slots
itself (three ranges), introduces the nodes with CLUSTER MEET and waits, with
a deadline, until every node says ``cluster_state:ok``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from streamq.embedded import ValkeyServer
from tests.servers import free_port

SLOTS = 16384
RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


def slot_ranges(masters: int) -> tuple[tuple[int, int], ...]:
    """The 16384 slots split into ``masters`` contiguous ranges, as even as they go."""
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    return tuple((bounds[i], bounds[i + 1] - 1) for i in range(masters))


class ValkeyCluster:
    """``masters`` cluster-mode valkey-servers under ``directory`` (three by default)."""

    def __init__(self, directory: Path, masters: int = 3, extra_args: tuple[str, ...] = ()) -> None:
        self.ranges = RANGES if masters == 3 else slot_ranges(masters)
        self.bus_ports = [free_port() for _ in self.ranges]
        self.nodes = [
            ValkeyServer(
                directory / f"node{i}",
                port=free_port(),
                extra_args=[
                    *("--cluster-enabled", "yes"),
                    *("--cluster-config-file", str(directory / f"node{i}" / "nodes.conf")),
                    *("--cluster-port", str(self.bus_ports[i])),  # else port + 10000: maybe taken
                    *("--cluster-node-timeout", "5000"),
                    *extra_args,
                ],
            )
            for i in range(len(self.ranges))
        ]

    @property
    def url(self) -> str:
        """The cluster URL streamq takes: any node is a seed."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        return [node.port or 0 for node in self.nodes]

    def start(self, timeout_s: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis(port=port) for port in self.ports]
        try:
            for client, (low, high) in zip(clients, self.ranges, strict=True):
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
            for client in clients[1:]:
                client.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", self.ports[0], self.bus_ports[0]
                )
            deadline = time.monotonic() + timeout_s
            while not all(_ok(client, len(self.ranges)) for client in clients):
                if time.monotonic() > deadline:
                    states = [client.execute_command("CLUSTER", "INFO") for client in clients]
                    raise RuntimeError(f"cluster not ok within {timeout_s} s: {states}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            with suppress(Exception):
                node.kill()


def _ok(client: redis.Redis, masters: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    if "cluster_state:ok" not in text or f"cluster_known_nodes:{masters}" not in text:
        return False
    slots = client.execute_command("CLUSTER", "SLOTS")
    return len(slots) == masters


@contextmanager
def valkey_cluster(directory: Path, masters: int = 3) -> Iterator[ValkeyCluster]:
    cluster = ValkeyCluster(directory, masters)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
