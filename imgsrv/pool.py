"""A bounded thread pool for libvips work, with admission control and fair turns by client.

Transforms run on a fixed number of threads (pyvips releases the GIL, so threads give real
parallelism). A request takes a place in the pool when it arrives, before its source is
downloaded, and keeps it until its transform ends.

Waiting transforms start **in turns by client**, not in one global arrival order: each client
(an API key's tenant, else a client address; see :mod:`imgsrv.clients`) has a queue of its own,
and the turns are those of start-time fair queueing. Every queued transform gets a turn number:
its client's previous one plus one, but never less than the turn of the transform that started
last. A free thread takes the lowest number (the oldest on a tie). Clients with backlogs
therefore alternate, and a client that had nothing waiting is next, not behind one more turn
of every backlogged client: a client that keeps 64 misses in flight delays another client's
request by the transforms already running, instead of by its whole backlog.

A new transform is refused at once with :class:`~imgsrv.errors.Overloaded` (503 +
Retry-After) when it could not start within ``max_wait`` seconds, judged for its own client:
the transforms that would start before it (each other client's waiting ones, up to as many
as this client will have, plus its own) x the recent mean transform time / threads. A
flooding client is refused while the others are still admitted. ``max_queue`` bounds the
places of all clients together; past it a client below its fair share of them is still let
in (up to twice that many places), so one client that fills the queue cannot lock out the
others.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from imgsrv import metrics
from imgsrv.errors import Overloaded

T = TypeVar("T")

# Weight of the newest transform time in the running mean: recent enough to follow a change of
# workload within a few dozen transforms, smooth enough to ignore one odd image.
EWMA_WEIGHT = 0.1
# Transforms timed before the expected wait is trusted for shedding: the first ones after a
# start are slow (libvips and the allocator warming up) and would shed an ordinary queue.
WARMUP_TRANSFORMS = 10
# The client of work that no request is waiting for (job renders): one turn per round.
BACKGROUND = "background"


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
    """One place in the pool for one client, held from admission until its transform ends."""

    __slots__ = ("_pool", "client", "queued_seconds", "running")

    def __init__(self, pool: TransformPool, client: str) -> None:
        self._pool: TransformPool | None = pool
        self.client = client
        # Set once work was submitted with it: from then on the work's end releases it.
        self.running = False
        self.queued_seconds = 0.0  # how long its work waited for a thread

    def release(self, _: object = None) -> None:
        """Free the place (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release(self)


@dataclass(slots=True, eq=False)
class _Job:
    """A transform waiting for a thread, and where its outcome goes."""

    admission: Admission
    call: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    turn: int = 0
    order: int = 0  # arrival order, for ties between turns
    queued_at: float = field(default_factory=time.perf_counter)
    started: bool = False


class TransformPool:
    """Runs blocking callables on ``threads`` threads, clients taking turns, waits bounded."""

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
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._admitted = 0  # running + not started (downloading or queued)
        self._running = 0
        self.completed = 0
        # Places not yet started, per client; and how many clients have at least k of them
        # (index k), so that a client's expected wait takes O(its own places), not O(clients).
        self._waiting: dict[str, int] = {}
        self._at_least: list[int] = [0]
        self._held: dict[str, int] = {}  # places per client, running or not
        # Jobs queued for a thread, per client; a heap of (turn, order, client) of each queue's
        # oldest job (entries whose job left the queue early are skipped when popped); the turn
        # of the job started last; the turn each client's next job gets at the earliest.
        self._queues: dict[str, deque[_Job]] = {}
        self._heads: list[tuple[int, int, str]] = []
        self._turn = 0
        self._next_turns: dict[str, int] = {}
        self._arrivals = itertools.count()
        self._mean_seconds = 0.0  # running mean of one transform, 0 until the first one
        self._samples = 0  # transforms that fed the mean
        self._warmup = warmup
        self._closing = False
        self._threads = [
            threading.Thread(target=self._serve, args=(nice,), name=f"vips_{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ numbers

    @property
    def admitted(self) -> int:
        """Transforms running or waiting for a thread (or for their source)."""
        return self._admitted

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - self.threads)

    def waiting_by_client(self) -> dict[str, int]:
        """Places not started yet (downloading or queued), per client."""
        with self._lock:
            return dict(self._waiting)

    @property
    def mean_seconds(self) -> float:
        """Running mean duration of one transform (0 before the first)."""
        return self._mean_seconds

    def expected_wait(self, client: str = "", extra: int = 1) -> float:
        """Seconds until ``extra`` more transforms of ``client`` could all have started.

        The transforms that start first are the running ones, then, turn by turn, at most as
        many of every other client's waiting ones as ``client`` will have, and its own. Counted
        as waiting, transforms still downloading their source are included, and a client that
        has nothing waiting may go before some of them: the figure is an upper bound.
        """
        with self._lock:
            return self._expected_wait(client, extra)

    def _expected_wait(self, client: str, extra: int) -> float:
        mine = self._waiting.get(client, 0)
        turns = mine + extra
        at_least = self._at_least
        # sum over all clients of min(waiting, turns), minus this client's own (mine)
        others = sum(at_least[k] for k in range(1, min(turns, len(at_least) - 1) + 1)) - mine
        before = self._running + others + turns  # up to and including the new ones
        return max(0, before - self.threads) * self._mean_seconds / self.threads

    # ------------------------------------------------------------------ admission

    def check_capacity(self, client: str = "", reserve: int = 0) -> None:
        """Raise Overloaded now if a new transform of ``client`` would be refused.

        ``reserve`` keeps that many places free for other callers: background work passes a
        reserve so that it can never fill the queue that requests need.
        """
        with self._lock:
            self._check(client, reserve)

    def _check(self, client: str, reserve: int) -> None:
        full = self._full(client, self.threads + self.max_queue - reserve)
        wait = 0.0
        late = False
        if self.max_wait > 0 and self._samples >= self._warmup:
            wait = self._expected_wait(client, 1 + reserve)
            late = wait > self.max_wait
        if full or late:
            raise Overloaded(
                f"{self._admitted} transforms are in flight (about {wait:.1f} s of work for "
                "this client); try again shortly",
                retry_after=self._retry_after(wait),
            )

    def _full(self, client: str, places: int) -> bool:
        """Whether ``client`` may take no more places.

        Past ``places`` in all, only a client holding less than its fair share of them (the
        places over the clients holding any, itself included) still gets one, up to twice the
        places in all: a client that filled the queue alone does not lock the others out.
        """
        if self._admitted < places:
            return False
        held = self._held.get(client, 0)
        holders = len(self._held) + (0 if held else 1)
        return held >= places / holders or self._admitted >= 2 * places

    def _retry_after(self, wait: float) -> int:
        """Seconds a refused client should wait: about what the queue needs to drain below the
        budget, spread at random so that refused clients do not all come back at once."""
        excess = min(max(wait - self.max_wait, float(self.retry_after)), 2 * self.max_wait or 60)
        return max(self.retry_after, math.ceil(excess * random.uniform(0.5, 1.5)))

    def admit(self, client: str = "", reserve: int = 0) -> Admission:
        """Take a place for one transform of ``client`` now, or raise Overloaded.

        Take it before fetching the source: a request that has a place is counted while it
        downloads, so sheds happen at once instead of after a download that is then wasted.
        """
        with self._lock:
            self._check(client, reserve)
            self._admitted += 1
            self._held[client] = self._held.get(client, 0) + 1
            self._add_waiting(client)
        return Admission(self, client)

    def _add_waiting(self, client: str) -> None:
        count = self._waiting.get(client, 0) + 1
        self._waiting[client] = count
        if count == len(self._at_least):
            self._at_least.append(0)
        self._at_least[count] += 1

    def _drop_waiting(self, client: str) -> None:
        count = self._waiting[client]
        self._at_least[count] -= 1
        if count == 1:
            del self._waiting[client]
        else:
            self._waiting[client] = count - 1

    def _release(self, admission: Admission) -> None:
        with self._lock:
            self._admitted -= 1
            self.completed += 1
            held = self._held[admission.client] - 1
            if held:
                self._held[admission.client] = held
            else:
                del self._held[admission.client]
            if admission.running:
                self._running -= 1
            else:  # answered without a transform (L2 hit, error): it never started
                self._drop_waiting(admission.client)

    # ------------------------------------------------------------------ running

    async def run(
        self, fn: Callable[..., T], *args: object, client: str = "", reserve: int = 0
    ) -> T:
        """Run ``fn(*args)`` on the pool; raise Overloaded if it could not start in time."""
        return await self.run_admitted(self.admit(client, reserve), fn, *args)

    async def run_admitted(self, admission: Admission, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` in the place ``admission`` holds; the place is freed when it ends.

        It ends when the work really ends (or is cancelled before it starts), not when the
        awaiting request goes away: a thread stays counted while libvips still uses it.
        """
        loop = asyncio.get_running_loop()
        job = _Job(admission, lambda: fn(*args), loop, loop.create_future())
        with self._lock:
            if self._closing:
                raise RuntimeError("the transform pool is shut down")
            self._enqueue(job)
            self._work.notify()
        try:
            result: T = await asyncio.shield(job.future)
            return result
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def _enqueue(self, job: _Job) -> None:
        client = job.admission.client
        job.turn = max(self._turn, self._next_turns.get(client, 0))
        job.order = next(self._arrivals)
        self._next_turns[client] = job.turn + 1
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
        queue.append(job)
        if len(queue) == 1:  # the client's new oldest job
            self._push_head(client)

    def _push_head(self, client: str) -> None:
        """Put the oldest queued job of ``client`` on the heap of queue heads."""
        head = self._queues[client][0]
        heapq.heappush(self._heads, (head.turn, head.order, client))

    def _abandon(self, job: _Job) -> None:
        """The awaiting request went away: a job that has not started never will."""
        with self._lock:
            if job.started:
                # It runs to its end; nobody reads its outcome, which is then dropped quietly.
                job.future.add_done_callback(_drop_outcome)
                return
            client = job.admission.client
            queue = self._queues.get(client)
            if queue is not None and job in queue:
                head = queue[0] is job
                queue.remove(job)
                if not queue:
                    del self._queues[client]
                elif head:  # the heap's entry for this client is stale now
                    self._push_head(client)
        job.admission.release()

    def _next_job(self) -> _Job | None:
        """The queued job with the lowest turn (None once shut down)."""
        with self._work:
            while True:
                while not self._heads:
                    if self._closing:
                        return None
                    self._work.wait()
                _, order, client = heapq.heappop(self._heads)
                queue = self._queues.get(client)
                if queue is not None and queue[0].order == order:
                    break
            job = queue.popleft()
            if queue:
                self._push_head(client)
            else:
                del self._queues[client]
            self._turn = job.turn
            self._forget_idle_turns()
            job.started = True
            job.admission.running = True
            self._running += 1
            self._drop_waiting(client)
            return job

    def _forget_idle_turns(self) -> None:
        # A client's next turn matters only while it is ahead of the current one; drop the
        # others now and then, so that the map does not keep every client ever seen.
        if len(self._next_turns) <= 2 * len(self._queues) + 64:
            return
        current = self._turn
        self._next_turns = {c: t for c, t in self._next_turns.items() if t > current}

    def _serve(self, nice: int) -> None:
        lower_thread_priority(nice)
        while (job := self._next_job()) is not None:
            started = time.perf_counter()
            job.admission.queued_seconds = started - job.queued_at
            metrics.POOL_WAIT_SECONDS.observe(job.admission.queued_seconds)
            try:
                outcome: tuple[bool, Any] = (True, job.call())
            except BaseException as exc:  # handed to the awaiting request
                outcome = (False, exc)
            finally:
                self._timed(time.perf_counter() - started)
                job.admission.release()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                job.loop.call_soon_threadsafe(_settle, job.future, outcome)

    def _timed(self, elapsed: float) -> None:
        with self._lock:
            self._samples += 1
            if self._mean_seconds:
                self._mean_seconds += EWMA_WEIGHT * (elapsed - self._mean_seconds)
            else:
                self._mean_seconds = elapsed

    def shutdown(self) -> None:
        """Let the running transforms finish, drop the queued ones, stop the threads."""
        with self._work:
            self._closing = True
            dropped = [job for queue in self._queues.values() for job in queue]
            self._queues.clear()
            self._heads.clear()
            self._work.notify_all()
        for job in dropped:
            job.admission.release()
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(job.future.cancel)
        for thread in self._threads:
            thread.join()


def _drop_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" warning


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
