"""A bounded thread pool for libvips work, with admission control.

Transforms run on a fixed number of threads (pyvips releases the GIL, so threads give real
parallelism) and wait for a thread in arrival order. When more than ``max_queue`` transforms
are already waiting, a new one is refused at once with :class:`~imgsrv.errors.Overloaded`
(503 + Retry-After) instead of growing everyone's latency without bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from imgsrv.errors import Overloaded

T = TypeVar("T")


class TransformPool:
    """Runs blocking callables on ``threads`` threads, at most ``max_queue`` of them waiting."""

    def __init__(self, threads: int, max_queue: int, retry_after: int = 1) -> None:
        self.threads = threads
        self.max_queue = max_queue
        self.retry_after = retry_after
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="vips")
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting

    @property
    def admitted(self) -> int:
        """Transforms running or waiting for a thread."""
        return self._admitted

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - self.threads)

    def check_capacity(self, reserve: int = 0) -> None:
        """Raise Overloaded now if a new transform would be refused (before fetching its source)."""
        if self._admitted >= self.threads + self.max_queue - reserve:
            raise self._overloaded()

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"{self._admitted} transforms are in flight; try again shortly",
            retry_after=self.retry_after,
        )

    def _admit(self, limit: int) -> None:
        with self._lock:
            if self._admitted >= limit:
                raise self._overloaded()
            self._admitted += 1

    def _release(self, _: Future[Any]) -> None:
        # Runs when the work really ends (or is cancelled before it starts), not when the
        # awaiting request goes away: a thread stays counted while libvips still uses it.
        with self._lock:
            self._admitted -= 1

    async def run(self, fn: Callable[..., T], *args: object, reserve: int = 0) -> T:
        """Run ``fn(*args)`` on the pool; raise Overloaded if the queue is full.

        ``reserve`` keeps that many queue places free for other callers (background work
        passes a reserve so that it can never fill the queue that requests need).
        """
        self._admit(self.threads + self.max_queue - reserve)
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
