"""A real Redis Cluster for tests: three masters (and optionally a replica each) from the same
binary as :mod:`tests.redisserver`, formed by the test itself (no ``redis-cli``).

Each node is a :class:`RedisServer` started with ``--cluster-enabled yes``; the cluster is
formed with ``CLUSTER MEET`` (every node meets the first), ``CLUSTER ADDSLOTSRANGE`` (the 16384
slots split in three) and ``CLUSTER REPLICATE`` for replicas. ``cluster_state:ok`` alone is not
enough before a client connects: every node must know every other and see all 16384 slots
covered, or ``RedisCluster()`` fails with "All slots are not covered".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import redis

from .redisserver import RedisServer, free_port

SLOTS = 16384


class RedisClusterNodes:
    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        persistent: bool = False,
        node_timeout_ms: int = 1000,
    ) -> None:
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        count = masters * (1 + replicas)
        self.nodes: list[RedisServer] = []
        taken: set[int] = set()
        #: Each node's cluster bus port, by its port.
        self.bus_ports: dict[int, int] = {}
        for index in range(count):
            node_dir = directory / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node = RedisServer(node_dir, persistent=persistent)
            while node.port in taken:
                node.port = free_port()
            # The bus port would be port + 10000 by default, which another node (or anything
            # else) may have been given: a port of its own, free now.
            bus_port = free_port()
            while bus_port == node.port or bus_port in taken:
                bus_port = free_port()
            taken.update((node.port, bus_port))
            self.bus_ports[node.port] = bus_port
            node.extra_options = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(bus_port),
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # A replica takes over at once (no delay for the replica's rank and data age).
                "--cluster-replica-validity-factor",
                "0",
                "--cluster-allow-replica-migration",
                "no",
            ]
            self.nodes.append(node)
        self.masters = self.nodes[:masters]
        self.replicas = self.nodes[masters:]

    @property
    def url(self) -> str:
        """The seed URL a node is given: any one node of the cluster."""
        return self.masters[0].url

    @property
    def cluster_url(self) -> str:
        """Several seeds: ``redis+cluster://h1:p1,h2:p2``."""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.masters)
        return f"redis+cluster://{seeds}"

    def client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(port=node.port, socket_timeout=5, decode_responses=True)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        first = self.client(self.nodes[0])
        for node in self.nodes[1:]:
            bus = self.bus_ports[node.port]
            command(first, "CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        per = SLOTS // len(self.masters)
        for index, node in enumerate(self.masters):
            low = index * per
            high = SLOTS - 1 if index == len(self.masters) - 1 else low + per - 1
            command(self.client(node), "CLUSTER", "ADDSLOTSRANGE", low, high)
        ids = {self.node_id(node) for node in self.nodes}
        self._wait(lambda: all(self._known_ids(node) == ids for node in self.nodes), "meet")
        for index, replica in enumerate(self.replicas):
            master = self.masters[index % len(self.masters)]
            master_id = self.node_id(master)
            command(self.client(replica), "CLUSTER", "REPLICATE", master_id)
        self._wait(self.ready, "cluster ok")

    def node_id(self, node: RedisServer) -> str:
        return str(command(self.client(node), "CLUSTER", "MYID"))

    def _known_ids(self, node: RedisServer) -> set[str]:
        """The ids ``node`` knows the cluster's nodes by. Every node must know every other by
        its real id before ``CLUSTER REPLICATE``: ``cluster_known_nodes`` also counts a node
        still in the MEET handshake, under a temporary id, and REPLICATE then answers "Unknown
        node" (a flaky fixture on a loaded machine)."""
        return {entry.node_id for entry in _nodes(self.client(node))}

    def ready(self) -> bool:
        """Every running node sees the cluster ok, all slots covered, and every replica is
        attached to its master."""
        try:
            for node in self.nodes:
                if node.process is None:
                    continue
                client = self.client(node)
                info = command(client, "CLUSTER", "INFO")
                if _field(info, "cluster_state") != "ok":
                    return False
                covered = sum(
                    high - low + 1 for entry in _nodes(client) for low, high in entry.slots
                )
                if covered != SLOTS:
                    return False
            for replica in self.replicas:
                if replica.process is None:
                    continue
                role = command(self.client(replica), "ROLE")
                if role[0] == "slave" and role[3] != "connected":
                    return False
        except redis.RedisError:
            return False
        return True

    def wait_ready(self, timeout: float = 20) -> None:
        self._wait(self.ready, "cluster ok", timeout)

    def _wait(self, done: object, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise RuntimeError(f"Redis cluster not formed in {timeout}s ({what})")

    def master_of(self, key: str) -> RedisServer:
        """The master node that serves ``key`` now."""
        running = next(node for node in self.nodes if node.process is not None)
        slot = int(command(self.client(running), "CLUSTER", "KEYSLOT", key))
        return self.owner_of_slot(slot)

    def owner_of_slot(self, slot: int) -> RedisServer:
        for node in self.nodes:
            if node.process is None:
                continue
            for entry in _nodes(self.client(node)):
                if "master" in entry.flags and any(lo <= slot <= hi for lo, hi in entry.slots):
                    return self.by_port(entry.port)
        raise LookupError(slot)

    def owner_seen_by(self, node: RedisServer, slot: int) -> int | None:
        """The port of the master that ``node`` says serves ``slot`` (asks that node only:
        another may be stopped)."""
        for entry in _nodes(self.client(node)):
            if "master" in entry.flags and any(lo <= slot <= hi for lo, hi in entry.slots):
                return entry.port
        return None

    def by_port(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A running replica of ``master``."""
        for replica in self.replicas:
            if replica.process is None:
                continue
            role = command(self.client(replica), "ROLE")
            if role[0] == "slave" and int(role[2]) == master.port:
                return replica
        raise LookupError(master.port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@attrs.frozen
class _Entry:
    node_id: str
    port: int
    flags: frozenset[str]
    slots: tuple[tuple[int, int], ...]


def _nodes(client: redis.Redis) -> list[_Entry]:
    """``CLUSTER NODES`` as this node sees it."""
    text = command(client, "CLUSTER", "NODES")
    if isinstance(text, dict):  # redis-py may parse it; ask for the raw text then
        raise TypeError("expected raw CLUSTER NODES")
    entries = []
    for line in str(text).splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        port = int(parts[1].split("@", 1)[0].rsplit(":", 1)[1])
        slots = []
        for item in parts[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        entries.append(_Entry(parts[0], port, frozenset(parts[2].split(",")), tuple(slots)))
    return entries


def command(client: redis.Redis, *args: object) -> Any:
    """One command to one node (redis-py leaves ``execute_command`` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _field(info: str, name: str) -> str:
    for line in info.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)
