"""Purge fan-out: every process drops a purged source from its memory via Redis pub/sub.

The subscription reaches every PUBLISH of the deployment on all three topologies (see
:mod:`imgsrv.redis_client.topology`): on a cluster each reconnection tries the next node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from imgsrv.redis_client import REDIS_ERRORS, RedisClient, open_pubsub

log = logging.getLogger("imgsrv.cache")


async def listen_for_purges(
    redis: RedisClient, channel: str, on_purge: Callable[[str], None], retry_after: float = 1.0
) -> None:
    """Call ``on_purge(source)`` for every purge published on ``channel``, until cancelled.

    Reconnects after Redis trouble. A purge missed while Redis was away still takes effect
    within the L1 TTL (at most five minutes).
    """
    attempt = 0
    while True:
        try:
            async with await open_pubsub(redis, attempt) as pubsub:
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message.get("data")
                    if isinstance(data, bytes):
                        on_purge(data.decode())
        except REDIS_ERRORS as exc:
            log.debug("purge listener reconnecting after %s", type(exc).__name__)
        except Exception:  # the listener must outlive anything a client library raises
            log.warning("purge listener failed; reconnecting", exc_info=True)
        attempt += 1
        await asyncio.sleep(retry_after)
