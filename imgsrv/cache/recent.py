"""RecentSources: a small, separately capped cache of source downloads.

A responsive image set asks for many variants of one source within a second. Concurrent
fetches of one source share a single download, and a finished download is kept for a short
while (seconds to a minute), so N variants cost one request to the origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from cachetools import TTLCache

from imgsrv.cache.flight import SingleFlight


class HasData(Protocol):
    @property
    def data(self) -> bytes: ...


S = TypeVar("S", bound=HasData)


def _size(value: HasData) -> int:
    return len(value.data) + 256


class RecentSources(Generic[S]):
    """Byte-capped TTL cache of downloads with single-flight fetching."""

    def __init__(self, max_bytes: int, ttl: float) -> None:
        self.max_bytes = max_bytes
        self._cache: TTLCache[str, S] | None = (
            TTLCache(maxsize=max_bytes, ttl=ttl, getsizeof=_size)
            if max_bytes > 0 and ttl > 0
            else None
        )
        self._flight: SingleFlight[str, S] = SingleFlight()

    async def get(self, source: str, fetch: Callable[[str], Awaitable[S]]) -> tuple[S, str]:
        """The download of ``source`` and how it was obtained: "hit", "shared" or "fetched"."""
        if self._cache is not None:
            cached = self._cache.get(source)
            if cached is not None:
                return cached, "hit"
        value, shared = await self._flight.run(source, lambda: fetch(source))
        if not shared and self._cache is not None and _size(value) <= self.max_bytes // 4:
            self._cache[source] = value
        return value, "shared" if shared else "fetched"

    def drop(self, source: str) -> None:
        if self._cache is not None:
            self._cache.pop(source, None)

    @property
    def bytes_in_use(self) -> int:
        return 0 if self._cache is None else int(self._cache.currsize)

    def expire(self) -> int:
        """Drop downloads past their time; returns how many were dropped.

        The cache otherwise only expires entries when it is next used, so after a burst of
        traffic the downloads would stay in memory until the next request.
        """
        if self._cache is None:
            return 0
        return len(self._cache.expire())
