"""One Redis client per process for the deployment ``IMGSRV_REDIS_URL`` names.

Every user of Redis (the L2 cache, render locks, purges, the job queue, its callbacks, the
readiness probe) shares the client :func:`connect_redis` returns: a redis-py asyncio ``Redis``
for a standalone server and for the master Redis Sentinel names (its connections ask the
sentinels where the master is, so they follow a failover by themselves), or a
``RedisCluster``, which follows MOVED and ASK redirections and re-reads the slot map after a
failover. Both take the same commands; what differs between topologies (pub/sub, waiting for
replicas) lives in :mod:`imgsrv.redis_client.topology`.

Connections fail fast: a short connect and command timeout and a single quick retry (a
pooled connection a restarted server closed), because the callers have their own answer to
a Redis that is away (the L2 breaker, a 503 for job submissions, a paused worker).
:func:`check_redis` runs once at start and turns a wrong or unreachable URL into one line
naming the setting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeAlias

import redis
import redis.cluster
import redis.retry
import redis.sentinel
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError

from imgsrv.config import Settings
from imgsrv.redis_client.cluster import ImgsrvRedisCluster
from imgsrv.redis_client.url import RedisTarget, RedisUrlError, parse_redis_url

log = logging.getLogger("imgsrv.redis")

RedisClient: TypeAlias = Redis | RedisCluster

# Everything a Redis call may raise when the deployment misbehaves. Cluster routing errors
# (an unserved slot) do not derive from RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)

HEALTH_CHECK_INTERVAL = 30  # seconds idle before a pooled connection is PINGed on reuse
START_CHECK_SECONDS = 3.0  # how long `imgsrv serve` / `imgsrv worker` try to reach Redis
CLUSTER_SLOTS = 16384


class RedisUnreachable(RedisUrlError):
    """Nothing at ``IMGSRV_REDIS_URL`` answers (yet)."""


def connect_redis(settings: Settings) -> RedisClient | None:
    """The process's client for ``settings.redis_url``, or None when none is configured.

    Nothing connects yet: connections open on first use.
    """
    if not settings.redis_url:
        return None
    return open_redis(
        parse_redis_url(settings.redis_url),
        connect_timeout=settings.redis_timeout,
        command_timeout=command_timeout(settings),
    )


def command_timeout(settings: Settings) -> float:
    """Socket timeout of a command: the Redis timeout, plus the bound of a job acceptance's
    WAIT for replicas, which holds the connection that long on purpose."""
    return settings.redis_timeout + max(0.0, float(settings.job_accept_timeout))


@dataclass(frozen=True, slots=True)
class _Flavour:
    """The redis-py classes of one kind of client: asyncio, or blocking."""

    redis: type[Any]
    cluster: type[Any]
    cluster_node: type[Any]
    sentinel: type[Any]
    retry: type[Any]


ASYNCIO = _Flavour(Redis, ImgsrvRedisCluster, ClusterNode, Sentinel, Retry)
BLOCKING = _Flavour(
    redis.Redis, redis.RedisCluster, redis.cluster.ClusterNode, redis.sentinel.Sentinel,
    redis.retry.Retry,
)  # fmt: skip


def open_redis(target: RedisTarget, connect_timeout: float, command_timeout: float) -> RedisClient:
    """An asyncio client for ``target`` with these timeouts (seconds)."""
    client: RedisClient = _client(ASYNCIO, target, connect_timeout, command_timeout)
    return client


def open_blocking_redis(url: str, timeout: float) -> redis.Redis | redis.RedisCluster:
    """A blocking client for ``url``, any topology, for one-shot commands (``imgsrv report``)."""
    client: redis.Redis | redis.RedisCluster = _client(
        BLOCKING, parse_redis_url(url), timeout, timeout
    )
    return client


def _client(
    flavour: _Flavour, target: RedisTarget, connect_timeout: float, command_timeout: float
) -> Any:
    retry = flavour.retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1)
    options = _connection_options(target, connect_timeout, command_timeout, retry)
    if target.topology == "cluster":
        return flavour.cluster(
            startup_nodes=[flavour.cluster_node(host, port) for host, port in target.nodes],
            # A slot without a master fails the keys of that slot (the L2 breaker's business),
            # not every command: the other masters keep serving.
            require_full_coverage=False,
            **options,
        )
    if target.topology == "sentinel":
        sentinel_options: dict[str, Any] = {
            "socket_timeout": connect_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": retry,
        }
        if target.sentinel_password:
            sentinel_options["password"] = target.sentinel_password
        if target.tls is not None:
            sentinel_options.update(_tls_options(target))
        sentinel = flavour.sentinel(list(target.nodes), sentinel_kwargs=sentinel_options, **options)
        return sentinel.master_for(target.master, db=target.db)
    if target.path:
        return flavour.redis(unix_socket_path=target.path, db=target.db, **options)
    host, port = target.nodes[0]
    return flavour.redis(host=host, port=port, db=target.db, **options)


def _connection_options(
    target: RedisTarget, connect_timeout: float, command_timeout: float, retry: Any
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": command_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": retry,
    }
    if target.topology != "cluster":
        options["health_check_interval"] = HEALTH_CHECK_INTERVAL
    if target.tls is not None:
        options.update(_tls_options(target))
    return options


def _tls_options(target: RedisTarget) -> dict[str, Any]:
    assert target.tls is not None
    return {
        "ssl": True,
        "ssl_ca_certs": target.tls.ca_certs,
        "ssl_certfile": target.tls.certfile,
        "ssl_keyfile": target.tls.keyfile,
        "ssl_cert_reqs": target.tls.cert_reqs,
        "ssl_check_hostname": target.tls.check_hostname,
    }


async def warm_up(client: RedisClient, timeout: float) -> None:
    """Read a cluster's slot map and command table now, at start, rather than inside the first
    request's short Redis deadline; nothing to do for other topologies. Failures are left to
    the callers' own handling (the client initialises again on its next command)."""
    if not isinstance(client, RedisCluster):
        return
    try:
        async with asyncio.timeout(timeout):
            await client.initialize()
    except REDIS_ERRORS as exc:
        log.warning("redis cluster not reachable at start", extra={"error": repr(exc)})


async def close_redis(client: RedisClient) -> None:
    """Close the client's connections (and, for Sentinel, those to the sentinels)."""
    await client.aclose()
    if isinstance(client, Redis) and isinstance(client.connection_pool, SentinelConnectionPool):
        await client.connection_pool.sentinel_manager.aclose()


# --------------------------------------------------------------------------- start check


async def verify_redis(target: RedisTarget, timeout: float) -> str:
    """Connect to ``target`` once and check it can serve imgsrv; returns what was found.

    Raises RedisUnreachable when nothing answers, and RedisUrlError for the rest: wrong
    password, no sentinel knows the master, hash slots without a master.
    """
    client = open_redis(target, connect_timeout=timeout, command_timeout=timeout)
    try:
        if isinstance(client, RedisCluster):
            return await _verify_cluster(client, target)
        if target.topology == "sentinel":
            await _verify_sentinel(client, target)
        mode = (await client.info("server")).get("redis_mode", "standalone")
        if mode != "standalone":
            scheme = "redis+cluster" if mode == "cluster" else "redis+sentinel"
            raise RedisUrlError(f"{_where(target)} is a Redis {mode} node: use {scheme}://")
        if target.topology == "sentinel":
            return f"{target.describe()}: master at {_master_address(client)}"
        return target.describe()
    except AuthenticationError:
        raise RedisUrlError(f"Redis at {_where(target)} refused the credentials") from None
    except (RedisUrlError, RedisUnreachable):
        raise
    except REDIS_ERRORS as exc:
        raise RedisUnreachable(f"cannot reach Redis at {_where(target)}: {_reason(exc)}") from None
    finally:
        await close_redis(client)


async def _verify_sentinel(client: Redis, target: RedisTarget) -> None:
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    sentinel: Sentinel = pool.sentinel_manager
    known = False
    answered = False
    for node in sentinel.sentinels:
        try:
            masters = await node.sentinel_masters()
        except REDIS_ERRORS:
            continue
        answered = True
        known = known or target.master in masters
    if not answered:
        raise RedisUnreachable(f"no sentinel answers at {_where(target)}")
    if not known:
        raise RedisUrlError(
            f"no sentinel at {_where(target)} knows a master named {target.master!r}"
        )
    try:
        await sentinel.discover_master(target.master)
    except MasterNotFoundError:
        raise RedisUnreachable(
            f"the sentinels at {_where(target)} know {target.master!r} but see it down"
        ) from None


async def _verify_cluster(client: RedisCluster, target: RedisTarget) -> str:
    try:
        await client.initialize()
    except RedisClusterException as exc:
        if "not enabled" in str(exc):
            raise RedisUrlError(f"{_where(target)} is not a Redis Cluster: use redis://") from None
        raise
    info = await client.cluster_info()
    served = int(info.get("cluster_slots_ok", 0))
    if served != CLUSTER_SLOTS:
        raise RedisUrlError(
            f"the cluster at {_where(target)} serves {served} of {CLUSTER_SLOTS} hash slots "
            f"(cluster_state: {info.get('cluster_state', '?')}); every slot needs a master"
        )
    masters = len(client.get_primaries())
    return f"{target.describe()}: {masters} masters, {len(client.get_replicas())} replicas"


def _master_address(client: Redis) -> str:
    pool = client.connection_pool
    address = getattr(pool, "master_address", None)
    return f"{address[0]}:{address[1]}" if address else "?"


def _where(target: RedisTarget) -> str:
    return target.path or ",".join(f"{host}:{port}" for host, port in target.nodes)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def check_redis(settings: Settings, wait: float = START_CHECK_SECONDS) -> str | None:
    """At start: parse and try ``settings.redis_url`` for up to ``wait`` seconds.

    Returns a description of the deployment (None without a URL); raises RedisUrlError (a
    ConfigError: the CLI prints one line and exits with status 2) when it cannot be used.
    Only "nothing answers" is tried again: a Redis starting next to imgsrv gets a moment.
    """
    if not settings.redis_url:
        return None
    target = parse_redis_url(settings.redis_url)
    timeout = max(settings.redis_timeout, 1.0)
    deadline = time.monotonic() + wait
    while True:
        try:
            return asyncio.run(verify_redis(target, timeout))
        except RedisUnreachable:
            if time.monotonic() + 0.5 > deadline:
                raise
        time.sleep(0.5)
