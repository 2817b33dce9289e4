"""The connection to the Redis deployment ``IMGSRV_REDIS_URL`` names: standalone, Sentinel or
Cluster. ``url`` parses the setting, ``client`` builds the one client a process shares and
checks it at start, ``topology`` holds what differs between topologies (pub/sub, WAIT)."""

from imgsrv.redis_client.client import (
    REDIS_ERRORS,
    RedisClient,
    RedisUnreachable,
    check_redis,
    close_redis,
    connect_redis,
    open_blocking_redis,
    open_redis,
    warm_up,
)
from imgsrv.redis_client.topology import ReplicaWait, open_pubsub
from imgsrv.redis_client.url import RedisTarget, RedisUrlError, parse_redis_url

__all__ = [
    "REDIS_ERRORS",
    "RedisClient",
    "RedisTarget",
    "RedisUnreachable",
    "RedisUrlError",
    "ReplicaWait",
    "check_redis",
    "close_redis",
    "connect_redis",
    "open_blocking_redis",
    "open_pubsub",
    "open_redis",
    "parse_redis_url",
    "warm_up",
]
