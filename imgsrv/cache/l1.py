"""L1: per-process memory cache of rendered images.

LFU eviction weighted by bytes (cachetools), plus a TTL of at most five minutes so that a purge
or a changed source is never served from memory for long. A hit costs a dict lookup: no
libvips, no Redis. Expired entries are dropped when looked up and by :meth:`L1Cache.expire`,
which the runtime calls on a timer: under a stream of URLs that are never asked for again the
cache would otherwise fill its whole byte budget (half the container's memory) with them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cachetools import LFUCache

from imgsrv.cache.entry import CacheEntry

MAX_TTL = 300.0
# Per-item bookkeeping counted with the bytes: the entry object and its ETag, the key, the
# cache's and the source index's slots, the expiry record (about 0.8 KB, measured in the
# tests). Small thumbnails are mostly bookkeeping: 600 bytes of image take 1.5 KB.
ITEM_OVERHEAD = 1024


class _Item:
    __slots__ = ("entry", "expires", "source")

    def __init__(self, entry: CacheEntry, expires: float, source: str) -> None:
        self.entry = entry
        self.expires = expires
        self.source = source


class _EvictingLFU(LFUCache[str, _Item]):
    """LFUCache that reports what it evicts, so the source index stays exact."""

    def __init__(self, maxsize: int, on_evict: Callable[[str, _Item], None]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=_item_size)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, _Item]:
        key, item = super().popitem()
        self._on_evict(key, item)
        return key, item


def _item_size(item: Any) -> int:
    assert isinstance(item, _Item)
    return len(item.entry.data) + ITEM_OVERHEAD


class L1Cache:
    """Byte-capped LFU + TTL cache of CacheEntry, with an index by source for purges."""

    def __init__(
        self,
        max_bytes: int,
        ttl: float = MAX_TTL,
        max_item_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl = min(ttl, MAX_TTL)
        # One item may take at most 1/16 of the cache, so a few huge outputs cannot wipe it.
        self.max_item_bytes = max_item_bytes or max(1, max_bytes // 16)
        self.evictions = 0
        self._clock = clock
        self._cache = _EvictingLFU(max(1, max_bytes), self._evicted)
        self._by_source: dict[str, set[str]] = {}
        # Keys in the order they were stored, with their expiry: the TTL is the same for all,
        # so the oldest expire first. A key stored again appears twice; its older record is
        # skipped because it no longer matches the item's expiry.
        self._expiries: deque[tuple[float, str]] = deque()

    @property
    def bytes_in_use(self) -> int:
        return int(self._cache.currsize)

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, key: str) -> CacheEntry | None:
        item = self._cache.get(key)
        if item is None:
            return None
        if item.expires <= self._clock():
            self._remove(key)
            return None
        return item.entry

    def put(self, key: str, entry: CacheEntry, source: str) -> bool:
        """Store ``entry``; returns False when it is too large to be worth a place."""
        if len(entry.data) + ITEM_OVERHEAD > self.max_item_bytes:
            return False
        self._remove(key)
        expires = self._clock() + self.ttl
        self._cache[key] = _Item(entry, expires, source)
        self._by_source.setdefault(source, set()).add(key)
        self._expiries.append((expires, key))
        return True

    def expire(self) -> int:
        """Drop every entry past its TTL; returns how many were dropped."""
        now = self._clock()
        dropped = 0
        while self._expiries and self._expiries[0][0] <= now:
            expires, key = self._expiries.popleft()
            item = self._cache.get(key)
            if item is not None and item.expires == expires:
                self._remove(key)
                dropped += 1
        # Records of entries that left by eviction or purge are only skipped when they come
        # due; keep their number bounded by the entries there are.
        if len(self._expiries) > 2 * len(self._cache) + 1024:
            live = {key: item.expires for key, item in self._cache.items()}
            self._expiries = deque(
                (expires, key) for expires, key in self._expiries if live.get(key) == expires
            )
        return dropped

    def drop_source(self, source: str) -> int:
        """Forget every variant of ``source``; returns how many were dropped."""
        keys = self._by_source.pop(source, set())
        for key in keys:
            self._cache.pop(key, None)
        return len(keys)

    def clear(self) -> None:
        self._cache.clear()
        self._by_source.clear()
        self._expiries.clear()

    def _remove(self, key: str) -> None:
        item = self._cache.pop(key, None)
        if item is not None:
            self._unindex(key, item)

    def _evicted(self, key: str, item: _Item) -> None:
        self.evictions += 1
        self._unindex(key, item)

    def _unindex(self, key: str, item: _Item) -> None:
        keys = self._by_source.get(item.source)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_source[item.source]
