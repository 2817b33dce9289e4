"""Memory and CPU of process trees, read from /proc while a measurement runs.

A server is a tree (gunicorn master + workers, thumbor parent + forks), so its memory is the
sum over the tree, re-discovered at every poll because workers may be replaced. RSS counts
shared library pages once per process, which is what ``ps`` and container dashboards show;
PSS (``smaps_rollup``) shares them out and is kept alongside as the fairer total.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree_pids(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their descendants that are alive now."""
    children = _children_map()
    found: list[int] = []
    stack = [pid for pid in roots if (PROC / str(pid)).exists()]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (0 if it is gone)."""
    try:
        pages = int((PROC / str(pid) / "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * _PAGE_KIB


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (0 if it is gone or unreadable)."""
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds one process has used so far."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine have spent busy (not idle or waiting) since boot."""
    # user nice system idle iowait irq softirq steal ...: busy = user+nice+system+irq+softirq
    # (guest time is inside user time; steal is time the hypervisor gave to someone else).
    fields = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / _TICKS


def machine_busy_percent(seconds: float = 1.0) -> float:
    """Busy CPU of the whole machine over the next ``seconds``, in percent of one core."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return 100.0 * (machine_busy_seconds() - before) / seconds


def tree_rss_mb(roots: Sequence[int]) -> float:
    return sum(rss_kib(pid) for pid in tree_pids(roots)) / 1024


def tree_pss_mb(roots: Sequence[int]) -> float:
    return sum(pss_kib(pid) for pid in tree_pids(roots)) / 1024


@dataclass
class TreeUsage:
    """What one watched tree did during a sampling window."""

    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    cpu_s: float = 0.0
    first_cpu: dict[int, float] = field(default_factory=dict)
    last_cpu: dict[int, float] = field(default_factory=dict)
    timeline: list[tuple[float, float]] = field(default_factory=list)
    """(time.time(), CPU seconds used so far) at every poll."""

    def cpu_at(self, moment: float) -> float:
        """CPU seconds used up to ``moment`` (time.time()), interpolated between two polls.

        Before the first poll it is the first value, after the last poll the last one.
        """
        timeline = self.timeline
        if not timeline:
            return 0.0
        if moment <= timeline[0][0]:
            return timeline[0][1]
        for (t0, c0), (t1, c1) in itertools.pairwise(timeline):
            if t0 <= moment <= t1:
                return c0 if t1 <= t0 else c0 + (c1 - c0) * (moment - t0) / (t1 - t0)
        return timeline[-1][1]

    def cpu_seconds(self, start: float | None = None, end: float | None = None) -> float:
        """CPU seconds used between two wall-clock times (default: the whole window)."""
        if not self.timeline:
            return 0.0
        begin = self.timeline[0][0] if start is None else start
        finish = self.timeline[-1][0] if end is None else end
        return max(0.0, self.cpu_at(finish) - self.cpu_at(begin))

    def cpu_percent(self, start: float | None = None, end: float | None = None) -> float:
        """CPU used between two wall-clock times (default: the whole window), in % of a core."""
        if len(self.timeline) < 2:
            return 0.0
        begin = max(self.timeline[0][0], start if start is not None else 0.0)
        finish = min(self.timeline[-1][0], end if end is not None else float("inf"))
        if finish <= begin:
            return 0.0
        return 100.0 * self.cpu_seconds(begin, finish) / (finish - begin)


# A poll this much later than due counts as a stall of the machine.
STALL_SECONDS = 0.05


class TreeSampler:
    """Polls named process trees in a background thread: peak RSS, CPU time used, and PSS.

    The sampler also notes when it wakes up late (:attr:`stalls`): a thread that sleeps
    0.2 s and runs 0.3 s later saw the machine give no CPU to a ready, unrelated process for
    that long, which shows in every latency of the moment.

    PSS is read once, when the sampler stops: reading ``smaps_rollup`` walks the process's
    page tables under its memory-map lock, which took up to 65 ms per imgsrv worker under
    load and stalled the server being measured (every thread that maps memory waits).

    CPU is the sum over processes of (last - first) cumulative time seen: a process that
    appears mid-window counts from its first poll, one that exits keeps what was last seen.
    """

    def __init__(self, trees: dict[str, Sequence[int]], interval: float = 0.2) -> None:
        self.trees = {name: list(roots) for name, roots in trees.items()}
        self.interval = interval
        self.usage = {name: TreeUsage() for name in trees}
        # The whole machine, to tell how much CPU went to processes outside the benchmark.
        self.machine = TreeUsage()
        self._machine_start = machine_busy_seconds()
        self._stop = threading.Event()
        self.stalls: list[tuple[float, float]] = []  # (wall time, seconds late) of late polls
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self.started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> TreeSampler:
        self.started = time.monotonic()
        self._poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll(with_pss=True)
        self.seconds = time.monotonic() - self.started

    def _run(self) -> None:
        while True:
            due = time.monotonic() + self.interval
            if self._stop.wait(self.interval):
                return
            late = time.monotonic() - due
            if late >= STALL_SECONDS:
                self.stalls.append((time.time(), late))
            self._poll()

    def stalls_between(self, start: float | None, end: float | None) -> list[float]:
        """How late (seconds) the sampler woke, for each late wake-up between two wall times."""
        return [
            late
            for at, late in self.stalls
            if (start is None or at >= start) and (end is None or at - late <= end)
        ]

    def _poll(self, with_pss: bool = False) -> None:
        busy = machine_busy_seconds() - self._machine_start
        self.machine.timeline.append((time.time(), busy))
        for name, roots in self.trees.items():
            usage = self.usage[name]
            pids = tree_pids(roots)
            usage.peak_rss_mb = max(usage.peak_rss_mb, sum(map(rss_kib, pids)) / 1024)
            if with_pss:
                usage.peak_pss_mb = max(usage.peak_pss_mb, sum(map(pss_kib, pids)) / 1024)
            for pid in pids:
                seconds = cpu_seconds(pid)
                usage.first_cpu.setdefault(pid, seconds)
                usage.last_cpu[pid] = seconds
            usage.cpu_s = sum(usage.last_cpu[p] - usage.first_cpu[p] for p in usage.last_cpu)
            usage.timeline.append((time.time(), usage.cpu_s))
