"""Sampling profiles of the imgsrv worker processes with py-spy, while a round runs.

``py-spy record --nonblocking`` reads the workers' memory without stopping them, so the
profile costs the server almost nothing. Stacks are saved raw (collapsed, one stack per
line with its sample count) and summarised: the share of samples in which a function is on
the stack (inclusive) and at the top (self), over all threads of all workers. Idle threads
(the event loop waiting in epoll, pool threads waiting for work) are not sampled, so the
shares are of busy time.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from bench.harness import procs
from bench.harness.proctree import PROC, tree_pids

_TICKS = os.sysconf("SC_CLK_TCK")
THREAD_LABELS = {
    "main": "event loop (main thread)",
    "python": "transform pool threads (Python side of pyvips calls)",
    "libvips worker": "libvips worker threads (pixel work)",
}


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, tid) -> (thread label, CPU seconds so far) for every thread of ``pids``."""
    found: dict[tuple[int, int], tuple[str, float]] = {}
    for pid in pids:
        try:
            tids = [int(t.name) for t in (PROC / str(pid) / "task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            task = PROC / str(pid) / "task" / str(tid)
            try:
                stat = (task / "stat").read_text()
                comm = "main" if tid == pid else (task / "comm").read_text().strip()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            label = THREAD_LABELS.get(comm, f"other threads ({comm})")
            found[(pid, tid)] = (label, (int(fields[11]) + int(fields[12])) / _TICKS)
    return found


def thread_cpu_report(
    before: dict[tuple[int, int], tuple[str, float]],
    after: dict[tuple[int, int], tuple[str, float]],
    seconds: float,
) -> str:
    """CPU per thread kind between two snapshots, in percent of one core."""
    totals: Counter[str] = Counter()
    for key, (label, cpu) in after.items():
        totals[label] += cpu - before.get(key, (label, 0.0))[1]
    lines = ["CPU by thread kind over the round (percent of one core, all workers)"]
    lines += [f"{100 * cpu / seconds:8.1f}%  {label}" for label, cpu in totals.most_common()]
    return "\n".join(lines) + "\n\n"


def worker_pids(master: int) -> list[int]:
    """The worker processes under a gunicorn master (everything in its tree but itself)."""
    return [pid for pid in tree_pids([master]) if pid != master]


def start(py_spy: Path, pids: list[int], seconds: float, out_dir: Path, label: str) -> list[Path]:
    """Start one py-spy per pid (they stop by themselves after ``seconds``); output files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for pid in pids:
        out = out_dir / f"{label}-{pid}.txt"
        argv = [
            str(py_spy), "record", "--pid", str(pid), "--duration", f"{max(1, int(seconds))}",
            "--rate", "200", "--format", "raw", "--nonblocking", "--threads",
            "--output", str(out),
        ]  # fmt: skip
        procs.spawn(f"py-spy-{pid}", argv, log_path=out_dir / "py-spy.log")
        outputs.append(out)
    return outputs


def _frames(stack: str) -> list[str]:
    # A raw frame reads "function (file.py:line)"; drop the line so one function is one key.
    # With --threads the first frame names the thread: "thread (tid): name".
    frames = []
    for frame in stack.split(";"):
        if frame.startswith("thread ("):
            continue
        name, _, where = frame.partition(" (")
        path = where.rsplit(":", 1)[0]
        short = "/".join(path.split("/")[-2:])
        frames.append(f"{name} ({short})" if path else name)
    return frames


# Where event-loop time goes: the first category whose marker is on a stack takes the sample.
LOOP_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("source download (httpx/httpcore)", ("SourceFetcher.fetch", "Renderer._download")),
    ("Redis (L2 cache, render locks)", ("L2Cache.", "redis/asyncio", "redis/_parsers")),
    ("job worker loop", ("JobWorker.", "jobs/")),
    # Logging frames only: the access log middleware's send wrapper also carries the
    # response's socket write, which belongs to HTTP.
    ("access log (logging)", ("(logging/", "(imgsrv/logs.py")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("URL parsing and checks", ("parse_path", "parse_query", "urls.py")),
    ("hand-off to the transform pool", ("TransformPool.", "wrap_future", "_chain_future")),
    ("cache lookups (L1, single-flight)", ("L1Cache.", "SingleFlight.", "cache/")),
    ("HTTP request/response (uvicorn, starlette, imgsrv routes)",
     ("httptools_impl", "starlette/", "imgsrv/routes", "imgsrv/access", "imgsrv/render")),
)  # fmt: skip


# Frames every sample of a thread passes through (process start-up, thread bootstrap): left
# out of the inclusive listing, where they would only fill the top lines.
ROOT_FRAMES = (
    "(gunicorn/", "(app/base.py)", "(app/wsgiapp.py)", "(workers/base.py)", "(<frozen runpy>)",
    "(uvicorn_worker/", "(uvicorn/_compat.py)", "(asyncio/runners.py)", "(threading.py)",
    "(futures/thread.py)",
)  # fmt: skip


def loop_category(stack: str) -> str:
    for name, markers in LOOP_CATEGORIES:
        if any(marker in stack for marker in markers):
            return name
    return "event loop internals (uvloop I/O, callbacks)"


def thread_kind(stack: str) -> str:
    """"loop" for the event loop thread, "pool" for transform threads, else "other"."""
    first = stack.split(";", 1)[0]
    if first.endswith(": MainThread"):
        return "loop"
    if "_worker (concurrent/futures/thread.py" in stack:
        return "pool"
    return "other"


def summarise(files: list[Path], top: int = 30) -> str:
    """Inclusive and self shares of the functions in collapsed-stack files, as text.

    Shares are of all busy samples; the first lines split them by thread kind (the event
    loop against the transform pool), the rest list functions.
    """
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    loop: Counter[str] = Counter()
    total = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = _frames(stack)
            total += count
            kind = thread_kind(stack)
            kinds[kind] += count
            if kind == "loop":
                loop[loop_category(stack)] += count
            for name in set(frames):
                inclusive[name] += count
            if frames:
                self_time[frames[-1]] += count
    if total == 0:
        return "no samples\n"
    lines = [f"{total} samples (busy threads of all workers)", ""]
    lines += [f"{100 * n / total:8.1f}%  thread kind: {kind}" for kind, n in kinds.most_common()]
    if loop:
        lines += ["", "event loop thread, by activity (share of all busy samples)"]
        lines += [f"{100 * n / total:8.1f}%  {name}" for name, n in loop.most_common()]
    lines += ["", "inclusive  function"]
    shown = [
        (name, n) for name, n in inclusive.most_common() if not any(r in name for r in ROOT_FRAMES)
    ][:top]
    lines += [f"{100 * n / total:8.1f}%  {name}" for name, n in shown]
    lines += ["", "self       function"]
    lines += [f"{100 * n / total:8.1f}%  {name}" for name, n in self_time.most_common(top)]
    return "\n".join(lines) + "\n"
