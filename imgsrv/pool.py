"""A bounded thread pool for libvips work, with admission control.

Transforms run on a fixed number of threads (pyvips releases the GIL, so threads give real
parallelism) and wait for a thread in arrival order. A new transform is refused at once with
:class:`~imgsrv.errors.Overloaded` (503 + Retry-After) when it could not start in time: when its
expected wait (transforms ahead of it x the recent mean transform time / threads) passes
``max_wait`` seconds, or when ``max_queue`` transforms are already waiting. Shedding early keeps
the latency of the accepted requests bounded instead of growing everyone's without limit.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from imgsrv import metrics
from imgsrv.errors import Overloaded

T = TypeVar("T")

# Weight of the newest transform time in the running mean: recent enough to follow a change of
# workload within a few dozen transforms, smooth enough to ignore one odd image.
EWMA_WEIGHT = 0.1
# Transforms timed before the expected wait is trusted for shedding: the first ones after a
# start are slow (libvips and the allocator warming up) and would shed an ordinary queue.
WARMUP_TRANSFORMS = 10


def lower_thread_priority(nice: int) -> None:
    """Make the calling thread ``nice`` steps nicer than it is (Linux: per thread).

    Transform threads run nicer than the event loop, so that the loop, whose work is short and
    latency-bound (cache hits, refusals, reading sources), gets a core as soon as it has work
    instead of waiting for a time slice behind CPU-bound transforms. Threads libvips starts
    from a transform thread inherit the value. Elsewhere the value would apply to the whole
    process, so it is left alone.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, min(19, current + nice))


class Admission:
    """One place in the pool, held from admission until its transform ends."""

    __slots__ = ("_pool", "running")

    def __init__(self, pool: TransformPool) -> None:
        self._pool: TransformPool | None = pool
        # Set once work was submitted with it: from then on the work's end releases it.
        self.running = False

    def release(self, _: object = None) -> None:
        """Free the place (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release()


class TransformPool:
    """Runs blocking callables on ``threads`` threads with bounded waiting."""

    def __init__(
        self,
        threads: int,
        max_queue: int,
        retry_after: int = 1,
        max_wait: float = 0.0,
        nice: int = 0,
        warmup: int = WARMUP_TRANSFORMS,
    ) -> None:
        self.threads = threads
        self.max_queue = max_queue
        self.retry_after = retry_after
        self.max_wait = max_wait
        self._executor = ThreadPoolExecutor(
            threads, thread_name_prefix="vips", initializer=lower_thread_priority, initargs=(nice,)
        )
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self.completed = 0
        self._mean_seconds = 0.0  # running mean of one transform, 0 until the first one
        self._samples = 0  # transforms that fed the mean
        self._warmup = warmup

    @property
    def admitted(self) -> int:
        """Transforms running or waiting for a thread."""
        return self._admitted

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - self.threads)

    @property
    def mean_seconds(self) -> float:
        """Running mean duration of one transform (0 before the first)."""
        return self._mean_seconds

    def expected_wait(self, extra: int = 1) -> float:
        """Seconds until ``extra`` more transforms could all have started."""
        ahead = max(0, self._admitted + extra - self.threads)
        return ahead * self._mean_seconds / self.threads

    def check_capacity(self, reserve: int = 0) -> None:
        """Raise Overloaded now if a new transform would be refused (before fetching its source).

        ``reserve`` keeps that many places free for other callers: background work passes a
        reserve so that it can never fill the queue that requests need.
        """
        with self._lock:
            self._check(reserve)

    def _check(self, reserve: int) -> None:
        full = self._admitted >= self.threads + self.max_queue - reserve
        late = (
            self.max_wait > 0
            and self._samples >= self._warmup
            and self.expected_wait(1 + reserve) > self.max_wait
        )
        if full or late:
            wait = max(self.expected_wait(), float(self.retry_after))
            raise Overloaded(
                f"{self._admitted} transforms are in flight (about {wait:.1f} s of work); "
                "try again shortly",
                retry_after=math.ceil(wait),
            )

    def admit(self, reserve: int = 0) -> Admission:
        """Take a place for one transform now, or raise Overloaded.

        Take it before fetching the source: a request that has a place is counted while it
        downloads, so sheds happen at once instead of after a download that is then wasted.
        """
        with self._lock:
            self._check(reserve)
            self._admitted += 1
        return Admission(self)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1
            self.completed += 1

    def _timed(self, submitted: float, fn: Callable[..., T], *args: object) -> T:
        started = time.perf_counter()
        metrics.POOL_WAIT_SECONDS.observe(started - submitted)
        try:
            return fn(*args)
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._samples += 1
                if self._mean_seconds:
                    self._mean_seconds += EWMA_WEIGHT * (elapsed - self._mean_seconds)
                else:
                    self._mean_seconds = elapsed

    async def run(self, fn: Callable[..., T], *args: object, reserve: int = 0) -> T:
        """Run ``fn(*args)`` on the pool; raise Overloaded if it could not start in time."""
        return await self.run_admitted(self.admit(reserve), fn, *args)

    async def run_admitted(self, admission: Admission, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` in the place ``admission`` holds; the place is freed when it ends.

        It ends when the work really ends (or is cancelled before it starts), not when the
        awaiting request goes away: a thread stays counted while libvips still uses it.
        """
        admission.running = True
        future = self._executor.submit(self._timed, time.perf_counter(), fn, *args)
        future.add_done_callback(admission.release)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
