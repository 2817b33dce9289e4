"""Purge fan-out: every process drops a purged source from its memory via Redis pub/sub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("imgsrv.cache")


async def listen_for_purges(
    redis: Redis, channel: str, on_purge: Callable[[str], None], retry_after: float = 1.0
) -> None:
    """Call ``on_purge(source)`` for every purge published on ``channel``, until cancelled.

    Reconnects after Redis trouble. A purge missed while Redis was away still takes effect
    within the L1 TTL (at most five minutes).
    """
    while True:
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        on_purge(data.decode())
        except (RedisError, OSError) as exc:
            log.debug("purge listener reconnecting after %s", type(exc).__name__)
        await asyncio.sleep(retry_after)
