"""Single-flight: concurrent calls for the same key share one execution."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Runs ``fn`` once per key at a time; callers arriving meanwhile await the same result.

    The work runs in its own task, so a caller that goes away (client disconnect) neither
    cancels it nor the other callers waiting on it.
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def __contains__(self, key: K) -> bool:
        """Whether a call for ``key`` is under way (a new caller would share it)."""
        return key in self._inflight

    async def run(self, key: K, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Result of ``fn()`` and whether it was shared with an earlier caller."""
        task = self._inflight.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(fn())
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task), shared

    def _done(self, key: K, task: asyncio.Task[T]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # every waiter may be gone; mark the error as seen
