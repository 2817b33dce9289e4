"""Keep-alive connections spread evenly over the worker processes.

Under gunicorn every worker accepts from the one listening socket, and whichever wakes first
takes the connections waiting there. Clients that keep a fixed set of keep-alive connections (a
CDN edge, a load balancer, a benchmark) therefore often end up split unevenly, say 19 to 13,
for as long as the connections live. Each worker runs its transforms in arrival order, but on
its own share of the CPU, so the requests of the busier worker wait about 19/13 times longer:
the server as a whole no longer serves in arrival order.

The remedy is the one proxies use: a worker that holds clearly more than its share of the
requests in flight answers one of them with ``Connection: close``, and the client reconnects,
landing on whichever worker accepts first (most often the less busy one). The counts live in a
:class:`LoadBoard`, a small shared memory map that the gunicorn master creates before it forks
the workers; each worker writes only its own slot. At most one connection per worker is closed
per :data:`CLOSE_INTERVAL`, so that the counts can settle between moves.
"""

from __future__ import annotations

import mmap
import struct
import time
from collections.abc import Callable

_SLOT = struct.Struct("=qq")  # pid (0 = free), requests in flight
_COUNT = struct.Struct("=q")
_COUNT_OFFSET = 8

# A worker closes a connection only when it holds at least this many requests more than the
# mean (1: the counts settle within one of each other)...
EXCESS = 1
# ...and at most once in this many seconds.
CLOSE_INTERVAL = 0.25
# The board is read at most once in this many seconds: reading every slot on every response
# cost as much as the rest of a memory-cache hit.
CHECK_INTERVAL = 0.01


class LoadBoard:
    """Requests in flight per worker process, in memory shared by every worker."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        # Anonymous and shared: children forked after this see the same pages.
        self._map = mmap.mmap(-1, _SLOT.size * slots)

    def free_slot(self, taken: set[int]) -> int | None:
        """A slot that no live worker holds (the master tracks ``taken``), or None if full."""
        for slot in range(self.slots):
            if slot not in taken:
                return slot
        return None

    def clear(self, slot: int) -> None:
        """Forget the worker that held ``slot`` (it exited)."""
        _SLOT.pack_into(self._map, slot * _SLOT.size, 0, 0)

    def worker(
        self, slot: int, pid: int, clock: Callable[[], float] = time.monotonic
    ) -> WorkerLoad:
        """The view of one worker process, which owns ``slot`` from now on."""
        _SLOT.pack_into(self._map, slot * _SLOT.size, pid, 0)
        return WorkerLoad(self, slot, clock)

    def read(self, slot: int) -> tuple[int, int]:
        """``(pid, requests in flight)`` of a slot."""
        pid, count = _SLOT.unpack_from(self._map, slot * _SLOT.size)
        return int(pid), int(count)

    def write_count(self, slot: int, count: int) -> None:
        _COUNT.pack_into(self._map, slot * _SLOT.size + _COUNT_OFFSET, count)

    def mean_load(self) -> float:
        """Mean requests in flight over the live workers."""
        live = [count for pid, count in map(self.read, range(self.slots)) if pid]
        return sum(live) / len(live) if live else 0.0


class WorkerLoad:
    """One worker's slot: counts its requests and decides when to hand a connection back."""

    def __init__(self, board: LoadBoard, slot: int, clock: Callable[[], float]) -> None:
        self.board = board
        self.slot = slot
        self.in_flight = 0
        self.closed = 0
        self._clock = clock
        self._last_close = float("-inf")
        self._next_check = float("-inf")

    def started(self) -> None:
        self.in_flight += 1
        self.board.write_count(self.slot, self.in_flight)

    def finished(self) -> None:
        self.in_flight -= 1
        self.board.write_count(self.slot, self.in_flight)

    def should_close(self) -> bool:
        """Whether the response now being sent should close its connection."""
        if self.in_flight < EXCESS + 1:
            return False
        now = self._clock()
        if now - self._last_close < CLOSE_INTERVAL or now < self._next_check:
            return False
        self._next_check = now + CHECK_INTERVAL
        if self.in_flight < self.board.mean_load() + EXCESS:
            return False
        self._last_close = now
        self.closed += 1
        return True


_this_worker: WorkerLoad | None = None


def set_this_worker(load: WorkerLoad | None) -> None:
    """Called in a worker process right after the fork (gunicorn's ``post_fork``)."""
    global _this_worker
    _this_worker = load


def this_worker() -> WorkerLoad | None:
    """This process's view of the board, or None when it is the only server process."""
    return _this_worker
