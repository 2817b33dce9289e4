"""The six scenarios of the results document, each a function of the shared Bench.

Each returns its scenario entry (``concurrency``, ``duration_s``, ``contenders``) and stops
every server it started, whatever happens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.harness import loadgen, servers, workload
from bench.harness.context import OVERLOAD_USERS, SYNC_USERS, Bench, Runner
from bench.harness.loadgen import LocustJob
from bench.harness.proctree import tree_rss_mb
from bench.harness.stats import Round, merge

Scenario = dict[str, Any]


def _entry(
    users: int, seconds: float, contenders: dict[str, Any], bench: Bench | None = None
) -> Scenario:
    if bench is not None and "imgsrv" in contenders:
        # The code may change between scenarios of a long run: name the state measured.
        contenders["imgsrv"]["extra"]["imgsrv_source_sha256"] = bench.imgsrv_source
    return {"concurrency": users, "duration_s": round(seconds, 1), "contenders": contenders}


def skipped(users: int, reason: str) -> Scenario:
    return {"concurrency": users, "duration_s": 0, "skipped": reason, "contenders": {}}


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return bytes(response.read())


def _started(stack: ExitStack, server: servers.Server | None) -> servers.Server | None:
    if server is not None:
        stack.callback(server.stop)
    return server


def _ceiling_runner(bench: Bench, impl: str, fmt: str) -> Runner:
    def run() -> Round:
        result, argv = loadgen.run_ceiling(
            bench.sources[workload.MISS_SOURCE], fmt, impl, bench.workers, bench.timing.miss_s,
            bench.work,
        )  # fmt: skip
        bench.commands[f"{'ceiling' if impl == 'vips' else 'pipeline'}_{fmt}"] = (
            f"{bench.workers} x python " + " ".join(argv[1:])
        )
        return result

    return run


# --------------------------------------------------------------------------- miss


def miss(bench: Bench, fmt: str) -> Scenario:
    """Unique source URLs at c=32: imgsrv vs the libvips ceiling (and thumbor for JPEG)."""
    name = "miss" if fmt == "jpeg" else "miss_webp"
    out_fmt = None if fmt == "jpeg" else "webp"
    seconds = bench.timing.miss_s
    with ExitStack() as stack:
        imgsrv = _started(stack, bench.start_imgsrv()) if bench.wants("imgsrv") else None
        thumbor = _started(stack, bench.start_thumbor(False)) if fmt == "jpeg" else None
        runners: dict[str, Runner] = {}
        idle = 0.0
        if imgsrv is not None:
            time.sleep(1)
            idle = tree_rss_mb(imgsrv.roots)
            template = bench.dialect("imgsrv").miss_template(fmt=out_fmt)
            runners["imgsrv"] = _locust_runner(
                bench, f"imgsrv_{name}", bench.miss_job([template], SYNC_USERS, seconds), imgsrv
            )
        if bench.wants("ceiling"):
            runners["ceiling"] = _ceiling_runner(bench, "vips", fmt)
        if bench.wants("pipeline"):
            runners["pipeline"] = _ceiling_runner(bench, "pipeline", fmt)
        if thumbor is not None:
            template = bench.dialect("thumbor").miss_template()
            runners["thumbor"] = _locust_runner(
                bench, f"thumbor_{name}", bench.miss_job([template], SYNC_USERS, seconds), thumbor
            )
        contenders = {k: merge(v) for k, v in bench.interleave(runners).items()}
        if imgsrv is not None:
            time.sleep(bench.timing.settle_s)
            extra = contenders["imgsrv"]["extra"]
            extra["rss_idle_mb"] = round(idle, 1)
            extra["rss_after_load_mb"] = round(tree_rss_mb(imgsrv.roots), 1)
            extra["l1_mb_after_load"] = round(bench.l1_mb(imgsrv.url), 1)
            probe = bench.dialect("imgsrv").miss_template(fmt=out_fmt).format(n="size-check")
            extra["output_bytes"] = len(_fetch(imgsrv.url + probe))
    return _entry(SYNC_USERS, bench.timing.rounds * seconds, contenders, bench)


def _locust_runner(bench: Bench, label: str, job: LocustJob, server: servers.Server) -> Runner:
    return lambda: bench.locust(label, job, server.url, server.roots)


# --------------------------------------------------------------------------- hit


def hit(bench: Bench) -> Scenario:
    """A warmed Zipf set at c=32: imgsrv (L1) vs bare starlette vs thumbor result storage."""
    seconds = bench.timing.hit_s
    with ExitStack() as stack:
        imgsrv = _started(stack, bench.start_imgsrv()) if bench.wants("imgsrv") else None
        thumbor = _started(stack, bench.start_thumbor(True))
        paths = {
            name: workload.hit_paths(bench.dialect(name), bench.timing.hit_urls)
            for name in ("imgsrv", "thumbor", "probe")
        }
        body = bench.work / "bare-body.jpg"
        if imgsrv is not None:
            bench.warm(imgsrv.url, paths["imgsrv"], max(2.0, seconds / 2), imgsrv.roots)
            # bare answers with the very bytes an imgsrv hit sends.
            body.write_bytes(_fetch(imgsrv.url + paths["imgsrv"][0]))
        else:
            body.write_bytes((bench.work / "sources" / "probe.jpg").read_bytes())
        bare = None
        if bench.wants("bare"):
            bare = _started(stack, servers.start_bare(bench.work, bench.workers, body))
            bench.commands["bare"] = bare.command
        if thumbor is not None:
            bench.warm(thumbor.url, paths["thumbor"], 1.0, thumbor.roots)
        runners: dict[str, Runner] = {}
        targets: list[tuple[str, str, list[int], str]] = []
        if imgsrv is not None:
            targets.append(("imgsrv", imgsrv.url, imgsrv.roots, "imgsrv"))
        if bare is not None:
            targets.append(("bare", bare.url, bare.roots, "imgsrv"))
        if thumbor is not None:
            targets.append(("thumbor", thumbor.url, thumbor.roots, "thumbor"))
        if bench.wants("loadgen"):
            targets.append(("loadgen", bench.origin.url, [bench.origin.process.pid], "probe"))
        for name, url, roots, dialect in targets:
            runners[name] = _hit_runner(bench, name, url, roots, paths[dialect])
        contenders = {k: merge(v) for k, v in bench.interleave(runners).items()}
        if imgsrv is not None:
            contenders["imgsrv"]["extra"]["l1_mb_after_load"] = round(bench.l1_mb(imgsrv.url), 1)
    return _entry(SYNC_USERS, bench.timing.rounds * seconds, contenders, bench)


def _hit_runner(
    bench: Bench, name: str, url: str, roots: list[int], ranked: list[str]
) -> Runner:
    label = f"{name}_hit"
    if bench.use_wrk:
        # The same Zipf draw (same seed) for every contender: identical request streams.
        sequence = workload.zipf_sequence(ranked, 50_000)
        paths = workload.write_lines(bench.work / "paths" / f"{label}.txt", sequence)
        return lambda: bench.wrk(label, url, roots, paths)
    ranks = workload.write_lines(bench.work / "paths" / f"{label}-ranked.txt", ranked)
    job = LocustJob(
        ["HitUser"], SYNC_USERS, bench.timing.hit_s, bench.timing.warmup_s,
        {"BENCH_HIT_PATHS": str(ranks)}, processes=2,
        max_requests=int(50_000 * (bench.timing.hit_s + bench.timing.warmup_s)),
    )  # fmt: skip
    return lambda: bench.locust(label, job, url, roots)


# --------------------------------------------------------------------------- mixed


def mixed(bench: Bench) -> Scenario:
    """90% Zipf hits, 10% misses spread over all four sources, at c=32 (locust)."""
    seconds = bench.timing.miss_s
    with ExitStack() as stack:
        runners: dict[str, Runner] = {}
        if bench.wants("imgsrv"):
            imgsrv = _started(stack, bench.start_imgsrv())
            assert imgsrv is not None
            ranked = workload.hit_paths(bench.dialect("imgsrv"), bench.timing.hit_urls)
            bench.warm(imgsrv.url, ranked, 2.0, imgsrv.roots)
            runners["imgsrv"] = _locust_runner(bench, "imgsrv_mixed", _mixed_job(bench, "imgsrv"),
                                               imgsrv)  # fmt: skip
        if bench.wants("loadgen"):
            origin = bench.origin
            job = _mixed_job(bench, "probe")
            runners["loadgen"] = lambda: bench.locust(
                "loadgen_mixed", job, origin.url, [origin.process.pid]
            )
        contenders = {k: merge(v) for k, v in bench.interleave(runners).items()}
    return _entry(SYNC_USERS, bench.timing.rounds * seconds, contenders, bench)


def _mixed_job(bench: Bench, dialect_name: str) -> LocustJob:
    dialect = bench.dialect(dialect_name)
    ranks = workload.write_lines(
        bench.work / "paths" / f"{dialect_name}-mixed-ranked.txt",
        workload.hit_paths(dialect, bench.timing.hit_urls),
    )
    templates = [dialect.miss_template(source) for source in workload.MIXED_SOURCES]
    return bench.miss_job(
        templates, SYNC_USERS, bench.timing.miss_s, user_classes=["MixedUser"],
        env={"BENCH_HIT_PATHS": str(ranks), "BENCH_HIT_RATIO": "0.9"},
    )  # fmt: skip


# --------------------------------------------------------------------------- overload


def overload(bench: Bench) -> Scenario:
    """The miss workload at c=256: what cannot be served in time must be shed with 503."""
    seconds = bench.timing.overload_s
    if not bench.wants("imgsrv"):
        return skipped(OVERLOAD_USERS, "imgsrv not selected")
    with ExitStack() as stack:
        imgsrv = _started(stack, bench.start_imgsrv())
        assert imgsrv is not None
        template = bench.dialect("imgsrv").miss_template()
        job = bench.miss_job([template], OVERLOAD_USERS, seconds, shed_ok=True)
        runners = {"imgsrv": _locust_runner(bench, "imgsrv_overload", job, imgsrv)}
        if bench.wants("loadgen"):
            # The same users against nginx's ready bytes: the latency floor of the load
            # generator itself at this concurrency, which every 503 timing includes.
            origin = bench.origin
            probe = bench.miss_job(
                [bench.dialect("probe").miss_template()], OVERLOAD_USERS, seconds
            )
            runners["loadgen"] = lambda: bench.locust(
                "loadgen_overload", probe, origin.url, [origin.process.pid]
            )
        contenders = {k: merge(v) for k, v in bench.interleave(runners).items()}
    return _entry(OVERLOAD_USERS, bench.timing.rounds * seconds, contenders, bench)


# --------------------------------------------------------------------------- jobs


def job_api_status(url: str) -> int:
    """Status of an empty authorised ``POST /v1/jobs``: 404/405 mean there is no job API."""
    request = urllib.request.Request(
        url + "/v1/jobs",
        data=b"{}",
        method="POST",
        headers={
            "Authorization": f"Bearer {servers.JOBS_API_KEY}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def jobs(bench: Bench) -> Scenario:
    """Sync misses at c=32 while two clients keep submitting 3-variant jobs."""
    seconds = bench.timing.jobs_s
    if not bench.wants("imgsrv"):
        return skipped(SYNC_USERS, "imgsrv not selected")
    with ExitStack() as stack:
        imgsrv = _started(stack, bench.start_imgsrv())
        assert imgsrv is not None
        status = job_api_status(imgsrv.url)
        if status in (404, 405):
            reason = f"this imgsrv has no job API (POST /v1/jobs answered {status})"
            bench.log(f"  jobs skipped: {reason}")
            return skipped(SYNC_USERS, reason)
        dialect = bench.dialect("imgsrv")
        job_source = bench.origin.url + "/v/{n}/" + workload.MISS_SOURCE
        job = bench.miss_job(
            [dialect.miss_template()], SYNC_USERS + 2, seconds,
            user_classes=["MissUser", "JobUser"], count_name="miss",
            env={"BENCH_JOBS_API_KEY": servers.JOBS_API_KEY, "BENCH_JOB_SOURCE": job_source,
                 "BENCH_JOB_USERS": "2", "BENCH_JOB_RATE": "2"},
        )  # fmt: skip
        runners = {"imgsrv": _locust_runner(bench, "imgsrv_jobs", job, imgsrv)}
        contenders = {k: merge(v) for k, v in bench.interleave(runners).items()}
        extra = contenders["imgsrv"]["extra"]
        extra["job_api_probe_status"] = status
        # What the in-process job workers got done meanwhile (counters since start).
        extra["job_metrics"] = bench.metric_values(
            imgsrv.url, r"imgsrv_jobs?_(submitted|finished|variants)_total\{.*\}"
        )
    extra["decode_once"] = decode_once(bench)
    return _entry(SYNC_USERS, bench.timing.rounds * seconds, contenders, bench)


def decode_once(bench: Bench) -> dict[str, Any]:
    """CPU of a 6-width WebP set from one decode against 6 renders (bench/decode_once.py), in
    a process of its own so that nothing else counts in its CPU time."""
    rounds = "1" if bench.timing.jobs_s < 10 else "5"
    script = Path(__file__).resolve().parents[1] / "decode_once.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rounds", rounds, "--work", str(bench.work / "sources")],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


SCENARIOS: dict[str, Callable[[Bench], Scenario]] = {
    "miss": lambda bench: miss(bench, "jpeg"),
    "miss_webp": lambda bench: miss(bench, "webp"),
    "hit": hit,
    "mixed": mixed,
    "overload": overload,
    "jobs": jobs,
}

