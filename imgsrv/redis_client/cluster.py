"""redis-py's asyncio cluster client, made to fail like a Redis client while a cluster heals.

Measured with redis-py 8.1 against a 3-master cluster whose masters were SIGKILLed under load:

* a command for a slot missing from the client's slot map (no master served it when the map
  was read) fails with a bare ``KeyError``, outside the client's own recovery, so the slot
  stays unusable after a master came back for it;
* while the client closes every connection to re-read the topology (its answer to
  CLUSTERDOWN and connection errors), calls of other tasks that were using or opening those
  connections fail with ``AttributeError`` or uvloop's ``RuntimeError`` about a closed
  transport.

:class:`ImgsrvRedisCluster` turns these into ``ConnectionError`` (a ``RedisError``, which every
caller already handles: the L2 breaker, a 503, a paused worker) and re-reads the slot map after
the first one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import ConnectionError as RedisConnectionError

# What redis-py's cluster client leaks while it reconnects (see the module docstring).
LEAKED_ERRORS = (KeyError, AttributeError, RuntimeError)


@contextlib.contextmanager
def _as_connection_errors() -> Iterator[None]:
    try:
        yield
    except LEAKED_ERRORS as exc:
        raise RedisConnectionError(
            f"cluster client reconnecting ({type(exc).__name__}: {exc})"
        ) from exc


class ImgsrvRedisCluster(RedisCluster):
    """A RedisCluster whose commands and pipelines fail only with Redis errors."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            with _as_connection_errors():
                return await super().execute_command(*args, **kwargs)
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, KeyError):
                await self.aclose()  # the next command initialises again: a fresh slot map
            raise

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise ValueError("shard_hint is not supported in cluster mode")
        # redis-py's stubs declare an attribute abstract that its own pipeline() leaves unset.
        return ImgsrvClusterPipeline(self, transaction)  # type: ignore[abstract]


class ImgsrvClusterPipeline(ClusterPipeline):
    """A cluster pipeline that fails only with Redis errors (see the module docstring)."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        with _as_connection_errors():
            return await super().execute(raise_on_error, allow_redirections)
