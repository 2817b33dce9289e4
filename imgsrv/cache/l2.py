"""L2: rendered images in Redis, shared by every process and instance.

Every call has a short deadline and goes through a circuit breaker: Redis trouble turns into
cache misses, never into failed image requests. Keys:

* ``{prefix}:v1:{S}:img:{hash}`` the CacheEntry, expiring after the caller's ttl (1-3 days); a
  hit refreshes the expiry (``GETEX``), so entries nobody reads expire by themselves;
* ``{prefix}:v1:{S}:src`` the set of image keys of one source, for purges, living as long as its
  longest-lived entry;
* ``{prefix}:v1:{S}:lock:{hash}`` the cross-process render lock (``SET NX PX`` with a token).

``{S}`` is a Redis Cluster hash tag made from the source, so the keys one script touches
together always share a slot, and the variants of one source live on one master while
different sources spread over all of them. The scripts only use commands of Redis 6.2.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from imgsrv import metrics
from imgsrv.cache.breaker import CircuitBreaker
from imgsrv.cache.entry import CacheEntry, CorruptEntry
from imgsrv.redis_client import REDIS_ERRORS, RedisClient

log = logging.getLogger("imgsrv.cache")

T = TypeVar("T")

VERSION = "v1"
PURGE_CHANNEL_SUFFIX = "purge"

# A miss's first round trip: the entry (its expiry refreshed), else the render lock if free.
# Returns {1, entry}, {2} (locked for the caller) or {3} (another process renders it).
_LOOKUP = """
local entry = redis.call('GETEX', KEYS[1], 'EX', ARGV[1])
if entry then
    return {1, entry}
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
    return {2}
end
return {3}
"""

# Store an entry and index it under its source (the index never gets a shorter life), and
# release the render lock if it still holds the caller's token: a miss's second round trip.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then
    redis.call('EXPIRE', KEYS[2], ARGV[2])
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
    redis.call('DEL', KEYS[3])
end
return 1
"""

# Delete every entry of a source and its index; returns how many entries existed.
_PURGE = """
local names = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for _, name in ipairs(names) do
    deleted = deleted + redis.call('DEL', name)
end
redis.call('DEL', KEYS[1])
return deleted
"""

# Deletes the lock only if it still holds our token (it may have expired and been re-taken).
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a miss learns from L2: the entry, or whether it holds the render lock (``token``)
    or another process does (neither)."""

    entry: CacheEntry | None = None
    token: str | None = None


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


class L2Cache:
    """Redis-backed image cache; every method degrades to "nothing" when Redis misbehaves."""

    def __init__(
        self,
        redis: RedisClient,
        prefix: str = "imgsrv",
        timeout: float = 0.25,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:{VERSION}"
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker()
        self.purge_channel = f"{self.prefix}:{PURGE_CHANNEL_SUFFIX}"
        self._reported_open = False  # what the breaker gauge says now
        self._release = redis.register_script(_RELEASE_LOCK)
        self._lookup = redis.register_script(_LOOKUP)
        self._put = redis.register_script(_PUT)
        self._purge = redis.register_script(_PURGE)

    def _tag(self, source: str) -> str:
        return f"{self.prefix}:{{{digest(source)[:16]}}}"

    def image_key(self, key: str, source: str) -> str:
        return f"{self._tag(source)}:img:{digest(key)}"

    def source_key(self, source: str) -> str:
        return f"{self._tag(source)}:src"

    def lock_key(self, key: str, source: str) -> str:
        return f"{self._tag(source)}:lock:{digest(key)}"

    @property
    def available(self) -> bool:
        return self.breaker.state != "open"

    async def _guard(self, op: str, call: Callable[[], Awaitable[T]]) -> T | None:
        if not self.breaker.allow():
            metrics.L2_SKIPPED.inc()
            return None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except REDIS_ERRORS as exc:
            self.breaker.failure()
            metrics.L2_ERRORS.labels(op).inc()
            log.warning("redis %s failed: %s", op, type(exc).__name__)
            return None
        finally:
            metrics.BATCHED.time(metrics.L2_SECONDS, time.perf_counter() - started, op)
            open_now = self.breaker.state == "open"
            if open_now != self._reported_open:
                metrics.BREAKER_OPEN.set(1 if open_now else 0)
                self._reported_open = open_now
        self.breaker.success()
        return result

    async def get(self, key: str, source: str, ttl: int) -> CacheEntry | None:
        """The entry for ``key``, refreshing its expiry to ``ttl`` seconds; None on miss."""
        name = self.image_key(key, source)
        raw = await self._guard("get", lambda: self.redis.getex(name, ex=ttl))
        return None if raw is None else await self._decoded(raw, name)

    async def lookup(self, key: str, source: str, ttl: int, lock_ttl_ms: int) -> Lookup:
        """The entry for ``key`` (expiry refreshed to ``ttl``), else its render lock if free.

        One round trip for what a miss asks first. When Redis is unavailable the lookup is a
        miss with a token of its own: rendering locally is always allowed, the lock only saves
        duplicate work across processes.
        """
        token = secrets.token_hex(8)
        names = [self.image_key(key, source), self.lock_key(key, source)]
        reply = await self._guard(
            "lookup", lambda: self._lookup(keys=names, args=[ttl, token, lock_ttl_ms])
        )
        if reply is None:  # Redis unavailable: render here
            return Lookup(token=token)
        if reply[0] == 1:
            entry = await self._decoded(reply[1], names[0])
            # A corrupt entry was dropped: render without the lock, which is taken by none.
            return Lookup(entry=entry, token=None if entry is not None else token)
        return Lookup(token=token if reply[0] == 2 else None)

    async def _decoded(self, raw: object, name: str) -> CacheEntry | None:
        try:
            if not isinstance(raw, bytes):
                raise CorruptEntry("not bytes")
            return CacheEntry.decode(raw)
        except CorruptEntry:
            log.warning("dropping a corrupt L2 entry")
            await self._guard("delete", lambda: self.redis.delete(name))
            return None

    async def put(
        self, key: str, entry: CacheEntry, ttl: int, source: str, lock_token: str | None = None
    ) -> bool:
        """Store ``entry`` for ``ttl`` seconds, index it under its source, and release the
        render lock ``lock_token`` holds (if given and still held)."""
        keys = [self.image_key(key, source), self.source_key(source), self.lock_key(key, source)]

        async def write() -> bool:
            await self._put(keys=keys, args=[entry.encode(), ttl, lock_token or ""])
            return True

        return bool(await self._guard("put", write))

    async def purge_source(self, source: str) -> int | None:
        """Delete every cached variant of ``source`` and tell every process to drop it from L1.

        Returns how many entries were deleted, or None when Redis is unavailable.
        """

        async def purge() -> int:
            deleted = int(await self._purge(keys=[self.source_key(source)]))
            await self.redis.publish(self.purge_channel, source)
            return deleted

        return await self._guard("purge", purge)

    async def release_lock(self, key: str, source: str, token: str) -> None:
        name = self.lock_key(key, source)
        await self._guard("unlock", lambda: self._release(keys=[name], args=[token]))

    async def ping(self) -> bool:
        return bool(await self._guard("ping", self.redis.ping))
