"""What differs between Redis topologies beyond single commands: pub/sub and replica acks.

Pub/sub. imgsrv uses classic ``PUBLISH``/``SUBSCRIBE``. On Redis Cluster a classic PUBLISH is
broadcast over the cluster bus to every node, so a subscriber connected to any node, master or
replica, hears every message whichever node the publisher reached. Sharded pub/sub
(``SPUBLISH``, Redis 7) would only reach the subscribers of the shard owning the channel's slot:
a purge must reach every process of every instance, so it is not used. Each reconnection of a
listener takes the next node, so a listener whose node died moves on by itself. With Sentinel
the subscription follows the master like every other connection.

Replica acknowledgement. ``WAIT n timeout`` returns how many replicas confirmed the writes of
*the connection it is sent on*, so a write that must be durable and its WAIT travel together
as one pipeline on one connection (:class:`ReplicaWait`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, NoScriptError, SlotNotCoveredError

from imgsrv.redis_client.client import RedisClient

REPLICAS_REFRESH = 5.0  # seconds a master's count of online replicas is trusted


async def open_pubsub(client: RedisClient, attempt: int = 0) -> PubSub:
    """A pub/sub connection hearing every PUBLISH of the deployment (see the module doc).

    ``attempt`` counts reconnections: on a cluster each one picks the next node.
    """
    if isinstance(client, RedisCluster):
        await client.initialize()
        nodes = sorted(client.get_nodes(), key=lambda node: node.name)
        return client.pubsub(node=nodes[attempt % len(nodes)])
    return client.pubsub()


async def master_of(client: RedisCluster, key: str) -> ClusterNode:
    """The master serving ``key``'s slot, by the client's slot map.

    A slot missing from the map (it had no master when the map was read) makes the client
    read the map again, as redis-py does after its own routing errors.
    """
    await client.initialize()
    try:
        node = client.get_node_from_key(key)
    except SlotNotCoveredError:
        await client.aclose()  # the next initialize() reads a fresh slot map
        await client.initialize()
        node = client.get_node_from_key(key)  # still unserved: SlotNotCoveredError, a 503
    if node is None:
        raise SlotNotCoveredError(f"no master serves the slot of {key!r}")
    return node


def _online_replicas(info: dict[str, Any]) -> int:
    """Replicas of ``INFO replication`` that are connected and in sync."""
    if info.get("role") != "master":
        return 0
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


class ReplicaWait:
    """Runs a script and then waits until ``replicas`` replicas have its writes.

    When the master that takes the write has no online replica (a standalone server, or
    replicas that are down), there is nothing to wait for and the write goes alone: its
    durability is the master's own (append-only file). The count of replicas is read with
    ``INFO replication`` from that master at most every :data:`REPLICAS_REFRESH` seconds, and
    again at once when fewer replicas confirmed than expected: after a failover the promoted
    master has none until the old one rejoins, and the first write after it must not be
    refused for replicas that no longer exist.
    """

    def __init__(self, client: RedisClient, replicas: int, timeout: float) -> None:
        self.client = client
        self.replicas = replicas
        self.timeout_ms = max(1, int(timeout * 1000))
        self._known: dict[str, tuple[float, int]] = {}  # master name -> (read at, replicas)

    async def run(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | bytes]
    ) -> tuple[Any, int | None]:
        """The script's reply, and how many replicas confirmed it (None: not waited for)."""
        if self.replicas < 1:
            return await script(keys=keys, args=args), None
        wanted = min(self.replicas, await self._replicas_of(keys[0]))
        if wanted < 1:
            return await script(keys=keys, args=args), None
        if isinstance(self.client, RedisCluster):
            reply, acked = await self._run_on_cluster(self.client, script, keys, args, wanted)
        else:
            reply, acked = await self._run_on_master(self.client, script, keys, args, wanted)
        if acked < wanted and await self._replicas_of(keys[0], fresh=True) == 0:
            return reply, None  # the master has no replica left to wait for
        return reply, acked

    async def _replicas_of(self, key: str, fresh: bool = False) -> int:
        client = self.client
        node = await master_of(client, key) if isinstance(client, RedisCluster) else None
        name = node.name if node is not None else ""
        known = self._known.get(name)
        now = time.monotonic()
        if known is not None and now - known[0] < REPLICAS_REFRESH and not fresh:
            return known[1]
        if isinstance(client, RedisCluster):
            info = await client.execute_command("INFO", "replication", target_nodes=node)
        else:
            info = await client.info("replication")
        count = _online_replicas(info)
        self._known[name] = (now, count)
        return count

    async def _run_on_master(
        self,
        client: Redis,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[str | int | bytes],
        wanted: int,
    ) -> tuple[Any, int]:
        # A pipeline runs on one connection; it loads the script first if the server lacks it.
        async with client.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", wanted, self.timeout_ms)
            reply, acked = await pipe.execute()
        return reply, int(acked)

    async def _run_on_cluster(
        self,
        client: RedisCluster,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[str | int | bytes],
        wanted: int,
    ) -> tuple[Any, int]:
        for attempt in range(3):
            node = await master_of(client, keys[0])
            pipe = client.pipeline()
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            # The same node as the script's slot: one node's commands share one connection.
            pipe.execute_command("WAIT", wanted, self.timeout_ms, target_nodes=node)
            # No redirections: a redirected script would run on another connection than WAIT.
            reply, acked = await pipe.execute(raise_on_error=False, allow_redirections=False)
            if isinstance(reply, NoScriptError):
                await client.script_load(script.script)
            elif isinstance(reply, AskError):  # MOVED too: learn the slot's new master
                await client.exists(keys[0])
            elif isinstance(reply, Exception):
                raise reply
            elif isinstance(acked, Exception):
                raise acked
            else:
                return reply, int(acked)
            if attempt == 2:
                raise reply
        raise AssertionError("unreachable")
