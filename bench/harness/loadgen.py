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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.harness import procs
from bench.harness.proctree import TreeSampler
from bench.harness.stats import Round

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "bench" / "locustfile.py"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_paths.lua"
OK = frozenset({200})
OK_OR_NOT_MODIFIED = frozenset({200, 304})


@dataclass
class Target:
    """What a round loads: the server's URL and the process trees that make the server.

    ``redis`` names the bench's Redis when the server uses it (imgsrv): its CPU in the
    window is counted with the server's (and reported on its own too).
    """

    url: str
    roots: Sequence[int]
    redis: Sequence[int] = ()


def _sampler(target: Target, loadgen: Sequence[int]) -> TreeSampler:
    trees = {"server": target.roots, "loadgen": loadgen}
    if target.redis:
        trees["redis"] = target.redis
    return TreeSampler(trees)


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
    ok_statuses: frozenset[int] = OK  # cdn_mix: a 304 answers a revalidation
    # fairness: user class -> users, each class in a locust process of its own (clients on
    # machines of their own: one client's users do not wait in the other's event loop)
    separate: Mapping[str, int] = field(default_factory=dict)


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


Row = Sequence[Any]
"""One locust sample: start time, latency ms, status, Retry-After of a 503, name, bytes."""


def _locust_rows(
    job: LocustJob, target: Target, work: Path, label: str
) -> tuple[list[Row], TreeSampler]:
    """Run locust against ``target``; its raw samples and the sampler of the run."""
    parts = [
        (f"{label}-{name}", replace(job, user_classes=[name], users=users, separate={}))
        for name, users in job.separate.items()
    ] or [(label, job)]
    samples = work / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for part_label, _ in parts:
        for old in samples.glob(part_label + ".*"):
            old.unlink()
    processes = [
        _spawn_locust(part, target, work, part_label, f"locust-{part_label}.log" if job.separate
                      else "locust.log")
        for part_label, part in parts
    ]  # fmt: skip
    with _sampler(target, [process.pid for process in processes]) as sampler:
        for process in processes:
            _wait(process, job.warmup + job.seconds + 30)
    rows: list[Row] = []
    for part_label, _ in parts:
        for part in samples.glob(part_label + ".*"):
            rows.extend(json.loads(part.read_text()))
    if not rows:
        raise RuntimeError(f"locust recorded no requests:\n{processes[0].log_tail()}")
    return rows, sampler


def _spawn_locust(
    job: LocustJob, target: Target, work: Path, label: str, log: str = "locust.log"
) -> procs.Managed:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BENCH_SAMPLES": str(work / "samples" / label),
        "BENCH_MAX_REQUESTS": str(job.max_requests // max(1, job.processes)),
        "BENCH_RUN_ID": f"{label}-{int(time.time() * 1000)}",
        **job.env,
    }
    argv = locust_command(job, target.url)
    return procs.spawn("locust", argv, env=env, log_path=work / "logs" / log)


def _window_start(rows: Sequence[Row], job: LocustJob) -> float:
    return min(float(row[0]) for row in rows) + job.warmup


def run_locust(job: LocustJob, target: Target, work: Path, label: str) -> Round:
    """Run locust against ``target`` and turn its raw samples into a Round."""
    rows, sampler = _locust_rows(job, target, work, label)
    result = rows_to_round(rows, job, stalls=sampler.stalls)
    begin = _window_start(rows, job)
    _account(result, sampler, begin, begin + job.seconds)
    return result


def run_locust_split(
    job: LocustJob, target: Target, work: Path, label: str, parts: Mapping[str, str]
) -> dict[str, Round]:
    """One locust run of several clients; a Round per client (``parts``: key -> request name).

    The clients share the server, so its CPU in the window is shared out by successful
    responses: every part reports the CPU per response of the whole run.
    """
    rows, sampler = _locust_rows(job, target, work, label)
    begin = _window_start(rows, job)
    rounds = {
        key: rows_to_round(rows, job, only=name, stalls=sampler.stalls)
        for key, name in parts.items()
    }
    whole = Round(ok=sum(r.ok for r in rounds.values()), seconds=job.seconds)
    _account(whole, sampler, begin, begin + job.seconds)
    for result in rounds.values():
        share = result.ok / whole.ok if whole.ok else 1 / len(rounds)
        _account(result, sampler, begin, begin + job.seconds)
        result.server_cpu_s = whole.server_cpu_s * share
        result.redis_cpu_s = whole.redis_cpu_s * share
    return rounds


def _account(
    result: Round, sampler: TreeSampler, start: float | None = None, end: float | None = None
) -> None:
    """Memory peaks of the server; CPU of server, Redis, load generator and the rest.

    CPU is counted over exactly ``start``..``end`` (interpolated between the sampler's
    polls). "Other" is everything else that ran on the machine meanwhile: the origin, the
    kernel's network work, and any process outside the benchmark (which should be ~0).
    """
    server = sampler.usage["server"]
    result.peak_rss_mb = server.peak_rss_mb
    result.peak_pss_mb = server.peak_pss_mb
    result.server_cpu_s = server.cpu_seconds(start, end)
    result.server_cpu_pct = server.cpu_percent(start, end)
    result.stalls_ms = [1000 * late for late in sampler.stalls_between(start, end)]
    result.loadgen_cpu_pct = sampler.usage["loadgen"].cpu_percent(start, end)
    redis = sampler.usage.get("redis")
    redis_pct = 0.0
    if redis is not None:
        result.redis_cpu_s = redis.cpu_seconds(start, end)
        redis_pct = redis.cpu_percent(start, end)
    machine = sampler.machine.cpu_percent(start, end)
    busy = result.server_cpu_pct + result.loadgen_cpu_pct + redis_pct
    result.other_cpu_pct = max(0.0, machine - busy)


def rows_to_round(
    rows: Sequence[Row],
    job: LocustJob,
    only: str | None = None,
    stalls: Sequence[tuple[float, float]] = (),
) -> Round:
    """Classify raw locust samples of the measured window into a Round.

    ``only``: count the samples of this request name alone (one client of several).
    ``stalls``: the machine's stalls (wall time at their end, seconds), to tell which
    successes none of them overlapped.
    """
    begin = _window_start(rows, job)
    end = begin + job.seconds
    result = Round(ok=0, seconds=job.seconds, latencies_ms=[], clear_latencies_ms=[])
    assert result.latencies_ms is not None and result.clear_latencies_ms is not None
    spans = [(at - late, at) for at, late in stalls]
    other: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for started_obj, ms_obj, status_obj, retry_after, name, length in rows:
        started, ms, status = float(started_obj), float(ms_obj), int(status_obj)
        if not begin <= started < end or (only is not None and name != only):
            continue
        if job.count_name and name != job.count_name:
            other[f"{name}_{status}"] = other.get(f"{name}_{status}", 0) + 1
            continue
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 503:
            if retry_after is None:
                result.retry_after_missing += 1
            else:
                result.retry_after_s.append(float(retry_after))
        if status in job.ok_statuses:
            result.ok += 1
            result.latencies_ms.append(ms)
            if not any(a < started + ms / 1000 and started < b for a, b in spans):
                result.clear_latencies_ms.append(ms)
            result.ok_bytes += int(length)
            result.bodies += int(length) > 0
            if status == 304:
                result.not_modified += 1
            else:
                result.render_latencies_ms.append(ms)
        elif status == 503 and job.shed_ok:
            result.shed += 1
            result.shed_latencies_ms.append(ms)
            result.shed_without_retry_after += retry_after is None
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


def wrk_command(
    url: str, requests_file: Path, users: int, seconds: float, threads: int, run_id: str = "run"
) -> list[str]:
    return [
        "wrk", "-t", str(threads), "-c", str(users), "-d", f"{seconds:.0f}s",
        "--timeout", "30s", "-s", str(WRK_SCRIPT), url, "--", str(requests_file), run_id,
    ]  # fmt: skip


@dataclass
class WrkJob:
    """One wrk run: the request file (see ``wrk_paths.lua``), connections and time.

    ``count_statuses`` turns on the script's response callback (statuses, body bytes,
    Retry-After): needed at miss rates, too costly at hit rates.
    """

    requests_file: Path
    users: int
    seconds: float
    threads: int = 2
    count_statuses: bool = False
    ok_statuses: frozenset[int] = OK
    shed_ok: bool = False  # overload: 503 is the intended answer, not an error


def run_wrk(job: WrkJob, target: Target, work: Path, label: str = "wrk") -> Round:
    """Run wrk (all connections at once) and turn the JSON its script prints into a Round."""
    out = work / "samples" / f"{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    run_id = f"{label}-{int(time.time() * 1000)}"
    argv = wrk_command(target.url, job.requests_file, job.users, job.seconds, job.threads, run_id)
    env = {**os.environ, "BENCH_WRK_STATUSES": "1" if job.count_statuses else "0"}
    started = time.time()
    process = procs.spawn(
        "wrk", argv, env=env, log_path=work / "logs" / "wrk.log", stdout_path=out
    )
    with _sampler(target, [process.pid]) as sampler:
        _wait(process, job.seconds + 30)
    lines = [line for line in out.read_text().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no result:\n{out.read_text()}\n{process.log_tail()}")
    result = wrk_round(json.loads(lines[-1]), job)
    # wrk measures from its start: the window is that long from the moment it was started.
    _account(result, sampler, started, started + result.seconds)
    return result


def wrk_round(data: Mapping[str, Any], job: WrkJob) -> Round:
    """A Round from the JSON line of ``wrk_paths.lua``."""
    sockets = data["timeout"] + data["connect"] + data["read"] + data["write"]
    result = Round(
        ok=0,
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p95_ms=data["p95_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        timeouts=data["timeout"],
    )
    if not data.get("counted"):
        # Without the callback wrk only knows that a status was >= 400.
        result.ok = data["requests"] - data["status"]
        result.errors = data["status"] + sockets
        if data["requests"]:
            result.ok_bytes = round(data["bytes"] * result.ok / data["requests"])
        result.bodies = result.ok
        result.extra["bytes_include_headers"] = True
        return result
    statuses = {str(k): int(v) for k, v in data["statuses"].items()}
    result.ok = sum(n for code, n in statuses.items() if int(code) in job.ok_statuses)
    result.not_modified = statuses.get("304", 0) if 304 in job.ok_statuses else 0
    if job.shed_ok:
        # wrk keeps one histogram for every answer: the refusals have no latencies of their own.
        result.shed = statuses.get("503", 0)
        result.shed_without_retry_after = int(data["retry_after_missing"])
    result.errors = sum(statuses.values()) - result.ok - result.shed + sockets
    result.ok_bytes = int(data["ok_bytes"])
    result.bodies = int(data["bodies"])
    for value, count in data["retry_after"].items():
        result.retry_after_s.extend([float(value)] * int(count))
    result.retry_after_missing = int(data["retry_after_missing"])
    if set(statuses) - {"200"}:
        result.extra["statuses"] = statuses
    return result


# --------------------------------------------------------------------------- ceiling


def ceiling_command(jobs: Path, impl: str, seconds: float, go: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "bench.harness.ceiling", "--jobs", str(jobs), "--impl", impl,
        "--seconds", f"{seconds:g}", "--go", str(go), "--out", str(out),
    ]  # fmt: skip


def run_ceiling(
    jobs: Path, impl: str, processes: int, seconds: float, work: Path, label: str
) -> tuple[Round, list[str]]:
    """``processes`` ceiling loops started together; per-transform times make the latency.

    Each worker imports, prepares and warms its jobs, says so with a file, and waits for the
    runner's go file, which holds the common start time; the CPU per transform is what the
    workers measured over their own loops (``time.process_time``).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    folder = work / "samples" / label
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    go = folder / "go"
    workers = []
    outs = []
    for index in range(processes):
        out = folder / f"worker-{index}.json"
        outs.append(out)
        argv = [*ceiling_command(jobs, impl, seconds, go, out), "--offset", str(index * 7)]
        workers.append(
            procs.spawn(f"ceiling-{index}", argv, env=env, log_path=work / "logs" / "ceiling.log")
        )
    deadline = time.monotonic() + 120
    ready = [out.with_suffix(".ready") for out in outs]
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        if not all(w.alive() for w in workers):
            raise RuntimeError(f"a ceiling worker exited early:\n{workers[0].log_tail()}")
        time.sleep(0.05)
    start_at = time.time() + 0.2
    go.write_text(f"{start_at:.6f}")
    target = Target("", [w.pid for w in workers])
    with _sampler(target, []) as sampler:
        for worker in workers:
            _wait(worker, seconds + 60)
    times: list[float] = []
    total_seconds = 0.0
    cpu_s = 0.0
    output_bytes = 0
    for out in outs:
        if not out.exists():
            raise RuntimeError(f"a ceiling worker wrote no result:\n{workers[0].log_tail()}")
        data = json.loads(out.read_text())
        times.extend(data["ms"])
        total_seconds = max(total_seconds, data["seconds"])
        cpu_s += data["cpu_s"]
        output_bytes += data["output_bytes"]
    result = Round(ok=len(times), seconds=total_seconds, latencies_ms=times)
    _account(result, sampler, start_at, start_at + seconds)
    result.server_cpu_s = cpu_s
    result.ok_bytes = output_bytes
    display = ceiling_command(jobs, impl, seconds, Path("GO"), Path("OUT"))
    return result, display
