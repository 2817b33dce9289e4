"""Running the load generators (locust, wrk) and the ceiling workers as timed rounds.

Each ``run_*`` function starts its load in child processes, samples the server's and its
own process trees while it runs (:class:`~bench.harness.proctree.TreeSampler`), waits for
it to stop by itself (time limit plus request cap; killed after a grace period otherwise)
and returns a :class:`~bench.harness.stats.Round`.

Locust runs ``warmup + seconds``; samples that started in the first ``warmup`` seconds
(connection set-up, user ramp-up) are left out, and the rate is counted over exactly the
measured window. wrk measures its whole run (its connections open in microseconds).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import procs
from bench.harness.proctree import TreeSampler
from bench.harness.stats import Round

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "bench" / "locustfile.py"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_paths.lua"


@dataclass
class Target:
    """What a round loads: the server's URL and the process trees that make the server."""

    url: str
    roots: Sequence[int]


def _sampler(target: Target, loadgen: Sequence[int]) -> TreeSampler:
    return TreeSampler({"server": target.roots, "loadgen": loadgen})


def _wait(process: procs.Managed, limit: float) -> None:
    deadline = time.monotonic() + limit
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.alive():
        process.stop(timeout=5)


# --------------------------------------------------------------------------- locust


@dataclass
class LocustJob:
    """One locust run: user classes, concurrency, timing and the scenario's environment."""

    user_classes: Sequence[str]
    users: int
    seconds: float
    warmup: float
    env: Mapping[str, str]
    processes: int = 1
    max_requests: int = 0
    shed_ok: bool = False  # overload: 503 is the intended answer, not an error
    count_name: str = ""  # only samples of this request name count (jobs: the sync ones)


def locust_command(job: LocustJob, url: str) -> list[str]:
    argv = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(job.users), "-r", str(job.users),
        # Whole seconds, with a margin: the measured window must end before locust stops.
        "-t", f"{math.ceil(job.warmup + job.seconds + 1)}s", "--stop-timeout", "5",
        "--host", url, "--only-summary", "--loglevel", "WARNING",
        "--exit-code-on-error", "0",
    ]  # fmt: skip
    if job.processes > 1:
        argv += ["--processes", str(job.processes)]
    return argv + list(job.user_classes)


def run_locust(job: LocustJob, target: Target, work: Path, label: str) -> Round:
    """Run locust against ``target`` and turn its raw samples into a Round."""
    samples = work / "samples" / label
    samples.parent.mkdir(parents=True, exist_ok=True)
    for old in samples.parent.glob(samples.name + ".*"):
        old.unlink()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BENCH_SAMPLES": str(samples),
        "BENCH_MAX_REQUESTS": str(job.max_requests // max(1, job.processes)),
        "BENCH_RUN_ID": f"{label}-{int(time.time() * 1000)}",
        **job.env,
    }
    argv = locust_command(job, target.url)
    process = procs.spawn("locust", argv, env=env, log_path=work / "logs" / "locust.log")
    with _sampler(target, [process.pid]) as sampler:
        _wait(process, job.warmup + job.seconds + 30)
    rows: list[list[float]] = []
    for part in samples.parent.glob(samples.name + ".*"):
        rows.extend(json.loads(part.read_text()))
    if not rows:
        raise RuntimeError(f"locust recorded no requests:\n{process.log_tail()}")
    result = rows_to_round(rows, job)
    begin = min(float(row[0]) for row in rows) + job.warmup
    _account(result, sampler, begin, begin + job.seconds)
    return result


def _account(
    result: Round, sampler: TreeSampler, start: float | None = None, end: float | None = None
) -> None:
    """Memory peaks of the server; CPU of server, load generator and the rest in the window.

    "Other" is everything else that ran on the machine meanwhile: the origin, Redis, the
    kernel's network work, and any process outside the benchmark (which should be ~0).
    """
    result.peak_rss_mb = sampler.usage["server"].peak_rss_mb
    result.peak_pss_mb = sampler.usage["server"].peak_pss_mb
    result.server_cpu_pct = sampler.usage["server"].cpu_percent(start, end)
    result.loadgen_cpu_pct = sampler.usage["loadgen"].cpu_percent(start, end)
    machine = sampler.machine.cpu_percent(start, end)
    result.other_cpu_pct = max(0.0, machine - result.server_cpu_pct - result.loadgen_cpu_pct)


def rows_to_round(rows: Sequence[Sequence[object]], job: LocustJob) -> Round:
    """Classify raw locust samples of the measured window into a Round."""
    first = min(float(row[0]) for row in rows)  # type: ignore[arg-type]
    begin = first + job.warmup
    end = begin + job.seconds
    result = Round(ok=0, seconds=job.seconds, latencies_ms=[])
    assert result.latencies_ms is not None
    other: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for started_obj, ms_obj, status_obj, retry_after, name in rows:
        started, ms, status = float(started_obj), float(ms_obj), int(status_obj)  # type: ignore[arg-type]
        if not begin <= started < end:
            continue
        if job.count_name and name != job.count_name:
            other[f"{name}_{status}"] = other.get(f"{name}_{status}", 0) + 1
            continue
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200:
            result.ok += 1
            result.latencies_ms.append(ms)
        elif status == 503 and job.shed_ok:
            result.shed += 1
            result.shed_latencies_ms.append(ms)
            result.shed_without_retry_after += 0 if retry_after else 1
        else:
            result.errors += 1
            if status == 0:
                result.timeouts += 1
    if other:
        result.extra["other_requests"] = other
    if set(statuses) - {"200"}:
        result.extra["statuses"] = statuses
    return result


# --------------------------------------------------------------------------- wrk


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk_command(url: str, paths_file: Path, users: int, seconds: float, threads: int) -> list[str]:
    return [
        "wrk", "-t", str(threads), "-c", str(users), "-d", f"{seconds:.0f}s",
        "--timeout", "30s", "-s", str(WRK_SCRIPT), url, "--", str(paths_file),
    ]  # fmt: skip


def run_wrk(
    target: Target, paths_file: Path, users: int, seconds: float, work: Path, threads: int = 2
) -> Round:
    """Run wrk over the paths of ``paths_file`` (cycled) and parse the JSON its script prints."""
    out = work / "samples" / "wrk.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = wrk_command(target.url, paths_file, users, seconds, threads)
    process = procs.spawn("wrk", argv, log_path=work / "logs" / "wrk.log", stdout_path=out)
    with _sampler(target, [process.pid]) as sampler:
        _wait(process, seconds + 30)
    lines = [line for line in out.read_text().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no result:\n{out.read_text()}\n{process.log_tail()}")
    data = json.loads(lines[-1])
    measured = data["duration_us"] / 1e6
    bad = data["status"] + data["timeout"] + data["connect"] + data["read"] + data["write"]
    result = Round(
        ok=data["requests"] - data["status"],
        seconds=measured,
        p50_ms=data["p50_us"] / 1000,
        p95_ms=data["p95_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=bad,
        timeouts=data["timeout"],
    )
    _account(result, sampler)
    return result


# --------------------------------------------------------------------------- ceiling


def ceiling_command(source: Path, fmt: str, impl: str, seconds: float, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "bench.harness.ceiling", "--source", str(source),
        "--format", fmt, "--impl", impl, "--seconds", f"{seconds:g}",
        "--start-at", "{start}", "--out", str(out),
    ]  # fmt: skip


def run_ceiling(
    source: Path, fmt: str, impl: str, processes: int, seconds: float, work: Path
) -> tuple[Round, list[str]]:
    """``processes`` ceiling loops started together; per-transform times make the latency."""
    start_at = time.time() + 2.5  # imports and warm-up happen before the common start
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = []
    outs = []
    for index in range(processes):
        out = work / "samples" / f"ceiling-{impl}-{fmt}-{index}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        outs.append(out)
        argv = ceiling_command(source, fmt, impl, seconds, out)
        argv = [a.replace("{start}", f"{start_at:.3f}") for a in argv]
        workers.append(
            procs.spawn(f"ceiling-{index}", argv, env=env, log_path=work / "logs" / "ceiling.log")
        )
    target = Target("", [w.pid for w in workers])
    with _sampler(target, []) as sampler:
        for worker in workers:
            _wait(worker, seconds + 60)
    times: list[float] = []
    total_seconds = 0.0
    output_bytes = 0
    for out in outs:
        if not out.exists():
            raise RuntimeError(f"a ceiling worker wrote no result:\n{workers[0].log_tail()}")
        data = json.loads(out.read_text())
        times.extend(data["ms"])
        total_seconds = max(total_seconds, data["seconds"])
        output_bytes = data["output_bytes"]
    result = Round(ok=len(times), seconds=total_seconds, latencies_ms=times)
    _account(result, sampler, start_at, start_at + seconds)
    result.extra["output_bytes"] = output_bytes
    display = ceiling_command(source, fmt, impl, seconds, Path("OUT"))
    return result, [a.replace("{start}", "T") for a in display]
