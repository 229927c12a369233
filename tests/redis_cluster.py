"""A private Redis Cluster for tests: three masters and three replicas on loopback ports.

Each node is a real ``redis-server --cluster-enabled yes`` with its own cluster-bus port
(``--cluster-port``: the default, port + 10000, overflows for ephemeral ports), joined
with ``redis-cli --cluster create``. Tests may fail nodes over, kill their connections
and move slots, then inspect every node's ``CLIENT LIST``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import key_slot

from runstream.cli.embedded_redis import free_port

MASTERS = 3
REPLICAS_PER_MASTER = 1


@dataclass
class ClusterNode:
    """One node of the cluster."""

    workdir: Path
    port: int = field(default_factory=free_port)
    bus_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (install the redis-server package)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--cluster-port",
                str(self.bus_port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.workdir / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: self.admin().ping(), f"node {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def admin(self) -> redis.Redis:
        """A short-lived synchronous client of this node, never counted as runstream's."""
        return redis.Redis(port=self.port, client_name="test-admin", socket_timeout=5)

    def client_names(self, prefix: str = "runstream:") -> list[str]:
        with self.admin() as admin:
            names = [str(c.get("name", "")) for c in admin.client_list()]
        return sorted(name for name in names if name.startswith(prefix))


@dataclass
class RedisCluster:
    """The whole cluster; :attr:`url` names one node, as ``RUNSTREAM_REDIS_URL`` would."""

    workdir: Path
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> None:
        count = MASTERS * (1 + REPLICAS_PER_MASTER)
        self.nodes = [ClusterNode(self.workdir / f"node{i}") for i in range(count)]
        for node in self.nodes:
            node.start()
        binary = shutil.which("redis-cli")
        if binary is None:
            raise RuntimeError("redis-cli is not on PATH (install the redis-tools package)")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                binary,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(REPLICAS_PER_MASTER),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        _wait(self._formed, "the cluster did not form")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def masters(self) -> list[ClusterNode]:
        """The nodes that own slots now."""
        found = []
        for node in self.nodes:
            if node.process is None:
                continue
            with node.admin() as admin:
                if admin.execute_command("ROLE")[0] in (b"master", "master"):
                    found.append(node)
        return found

    def client_names(self, prefix: str = "runstream:") -> dict[int, list[str]]:
        """Every live node's runstream connections, by port."""
        return {n.port: n.client_names(prefix) for n in self.nodes if n.process is not None}

    def wait_formed(self, timeout: float = 30.0) -> None:
        """Wait until every node agrees on the slot map and each master has its replica."""
        _wait(self._formed, "the cluster is not (re)formed", timeout)

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def owner(self, key: str) -> ClusterNode:
        """The master that owns ``key``'s slot now."""
        slot = key_slot(key.encode())
        for start, end, master, *_ in self._slots(self.masters()[0]):
            if start <= slot <= end:
                return self.node(int(master[1]))
        raise LookupError(f"slot {slot} is not covered")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        with master.admin() as admin:
            replica = admin.info("replication")["slave0"]
        return self.node(int(replica["port"]))

    def fail_over(self, master: ClusterNode) -> ClusterNode:
        """``CLUSTER FAILOVER`` on ``master``'s replica; returns the new master once the
        whole cluster agrees."""
        replica = self.replica_of(master)
        with replica.admin() as admin:
            admin.execute_command("CLUSTER", "FAILOVER")
        _wait(lambda: replica in self.masters() and master not in self.masters(), "no failover")
        self.wait_formed()
        return replica

    def migrate_slot(self, key: str, target: ClusterNode) -> None:
        """Move ``key``'s slot, with its keys, to ``target``, the way ``redis-cli --cluster
        reshard`` does: IMPORTING/MIGRATING, MIGRATE, then SETSLOT NODE everywhere."""
        slot = key_slot(key.encode())
        source = self.owner(key)
        ids = {}
        for node in (source, target):
            with node.admin() as admin:
                ids[node.port] = admin.execute_command("CLUSTER", "MYID").decode()
        with target.admin() as dst, source.admin() as src:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
            while moving := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moving
                )
            for node in (target, source, *[m for m in self.masters() if m not in (source, target)]):
                with node.admin() as admin:
                    admin.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        _wait(lambda: self.owner(key) == target, "the slot did not move")
        self.wait_formed()

    def _slots(self, node: ClusterNode) -> list[list[object]]:
        with node.admin() as admin:
            slots: list[list[object]] = admin.execute_command("CLUSTER", "SLOTS")
        return slots

    def _formed(self) -> bool:
        maps = set()
        for node in self.nodes:
            maps.add(tuple(sorted((s[0], s[1], s[2][1]) for s in self._slots(node))))  # type: ignore[index]
        if len(maps) != 1:
            return False
        for node in self.nodes:
            with node.admin() as admin:
                info = admin.cluster("INFO")
                state = info.get("cluster_state") if isinstance(info, dict) else None
                if state != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                    return False
        masters = self.masters()
        if len(masters) != MASTERS:
            return False
        for master in masters:  # each master has its replica, and the link is up
            with master.admin() as admin:
                replication = admin.info("replication")
                if int(replication.get("connected_slaves", 0)) < REPLICAS_PER_MASTER:
                    return False
        return True


def _wait(check: object, message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check() is not False:  # type: ignore[operator]
                return
        except (redis.ConnectionError, redis.ResponseError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)
