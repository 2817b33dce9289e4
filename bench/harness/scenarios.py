"""The scenarios of the results document, each a function of the shared Bench.

Each returns its scenario entry (``concurrency``, ``duration_s``, ``contenders``) and stops
every server it started, whatever happens.

* miss workloads (``miss``, ``miss_webp``, ``miss_4000_webp``, ``miss_alpha``, ``cdn_mix``,
  ``miss_tiny``; see :mod:`bench.harness.workload`) at c=32: imgsrv under locust (gradual
  ramp) and wrk (all connections at once), the libvips ceiling and imgsrv's pipeline looping
  over the same transforms, and thumbor with its options for the same output;
* ``hit`` and ``mixed``: cache hits, and 90% hits with 10% misses;
* ``fairness``: client A keeps 64 misses in flight while client B sends 4 per second,
  against B alone on the same server;
* ``overload*``: every miss workload at c=256, where 503 is the intended answer for what
  cannot be served in time;
* ``jobs``: misses while the job API is busy.
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

from bench.harness import ceiling, loadgen, refusals, servers, workload
from bench.harness.context import OVERLOAD_USERS, SYNC_USERS, Bench, Runner
from bench.harness.loadgen import OK, OK_OR_NOT_MODIFIED, LocustJob, Target, WrkJob
from bench.harness.proctree import tree_rss_mb
from bench.harness.report import OVERLOAD_SCENARIOS
from bench.harness.stats import Round, merge
from bench.harness.workload import MISS_WORKLOADS, Dialect, MissWorkload

Scenario = dict[str, Any]
LOW_USERS = 16  # miss_4000_webp also at c=16: no 503 may appear below the wait budget
FAIR_A_USERS = 64  # client A: misses in flight all the time
FAIR_B_USERS = 8  # client B: 8 users x 0.5/s = 4 misses per second
FAIR_B_RATE = 0.5


def _entry(
    users: int, seconds: float, contenders: dict[str, Any], bench: Bench | None = None
) -> Scenario:
    if bench is not None:
        for name, entry in contenders.items():
            if name.startswith("imgsrv"):
                # The code may change between scenarios of a long run: name the state measured.
                entry["extra"]["imgsrv_source_sha256"] = bench.imgsrv_source
    return {"concurrency": users, "duration_s": round(seconds, 1), "contenders": contenders}


def skipped(users: int, reason: str) -> Scenario:
    return {"concurrency": users, "duration_s": 0, "skipped": reason, "contenders": {}}


def _fetch(url: str, headers: dict[str, str] | None = None) -> tuple[bytes, str]:
    """The body and the ETag of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return bytes(response.read()), str(response.headers.get("ETag", ""))


def _started(stack: ExitStack, server: servers.Server | None) -> servers.Server | None:
    if server is not None:
        stack.callback(server.stop)
    return server


def _merged(bench: Bench, runners: dict[str, Runner]) -> dict[str, Any]:
    return {k: merge(v) for k, v in bench.interleave(runners).items()}


# --------------------------------------------------------------------------- miss


def miss_job(
    bench: Bench, dialect: Dialect, work: MissWorkload, users: int, seconds: float,
    shed_ok: bool = False,
) -> LocustJob:  # fmt: skip
    """The locust run of a miss workload as ``dialect`` spells it."""
    env: dict[str, str] = {}
    user = "MissUser"
    if work.headers:
        env["BENCH_HEADERS"] = json.dumps(work.headers)
    if work.head_ratio or work.revalidate_ratio:
        user = "CdnUser"
        env["BENCH_HEAD_RATIO"] = str(work.head_ratio)
        env["BENCH_REVALIDATE_RATIO"] = str(work.revalidate_ratio)
    return bench.miss_job(
        dialect.templates(work), users, seconds, user_classes=[user], env=env,
        shed_ok=shed_ok, ok_statuses=OK_OR_NOT_MODIFIED if work.conditional else OK,
    )  # fmt: skip


def miss_seconds(bench: Bench, work: MissWorkload) -> float:
    """Length of one round of ``work`` under load (longer for expensive mixes)."""
    return bench.timing.miss_s * work.round_factor


def _wrk_runner(
    bench: Bench, work: MissWorkload, server: servers.Server, overload_s: float = 0.0
) -> Runner:
    """imgsrv under wrk: every connection open at once, a new URL per request.

    With ``overload_s``: the overload run, c=256 for rounds that long, 503s counted as shed.
    """
    dialect = bench.dialect("imgsrv")
    revalidations: dict[str, str] = {}
    if work.conditional:
        # URLs fetched once now, so that the rounds can revalidate them (304 expected).
        for index, transform in enumerate(work.transforms):
            path = dialect.miss_path(transform, f"revalidate-{index}")
            _, etag = _fetch(server.url + path, work.headers)
            if etag:
                revalidations[path] = etag
    lines = workload.wrk_requests(dialect, work, revalidations)
    requests = workload.write_lines(bench.work / "paths" / f"wrk-{work.name}.txt", lines)
    ok = OK_OR_NOT_MODIFIED if work.conditional else OK
    users = OVERLOAD_USERS if overload_s else SYNC_USERS
    seconds = overload_s or miss_seconds(bench, work)
    job = WrkJob(requests, users, seconds, count_statuses=True, ok_statuses=ok,
                 shed_ok=bool(overload_s))  # fmt: skip
    target = bench.target(server)
    label = f"imgsrv_wrk_{'overload_' if overload_s else ''}{work.name}"
    return lambda: bench.wrk(label, target, job)


def _ceiling_runner(bench: Bench, impl: str, work: MissWorkload) -> Runner:
    """The workload's transforms in a loop: bare libvips (``vips``) or imgsrv's pipeline."""
    name = "ceiling" if impl == "vips" else "pipeline"
    jobs = [
        ceiling.Job(str(bench.sources[t.source]), t.width, t.format, work.accept)
        for t in work.transforms
    ]
    jobs_file = ceiling.write_jobs(bench.work / "paths" / f"{name}-{work.name}.json", jobs)

    def run() -> Round:
        result, argv = loadgen.run_ceiling(
            jobs_file, impl, bench.workers, miss_seconds(bench, work), bench.work,
            f"{name}-{work.name}",
        )  # fmt: skip
        bench.commands[f"{name}_{work.name}"] = f"{bench.workers} x " + " ".join(argv[1:])
        return result

    return run


def miss(bench: Bench, name: str) -> Scenario:
    """A miss workload at c=32: imgsrv (locust and wrk) vs the ceiling, pipeline, thumbor."""
    work = MISS_WORKLOADS[name]
    seconds = miss_seconds(bench, work)
    wants_imgsrv = any(bench.wants(c) for c in ("imgsrv", "imgsrv_wrk", "imgsrv_c16"))
    with ExitStack() as stack:
        imgsrv = _started(stack, bench.start_imgsrv()) if wants_imgsrv else None
        thumbor = _started(stack, bench.start_thumbor(False))
        runners: dict[str, Runner] = {}
        idle = 0.0
        if imgsrv is not None:
            time.sleep(1)
            idle = tree_rss_mb(imgsrv.roots)
            dialect = bench.dialect("imgsrv")
            if bench.wants("imgsrv"):
                job = miss_job(bench, dialect, work, SYNC_USERS, seconds)
                runners["imgsrv"] = _locust_runner(bench, f"imgsrv_{name}", job, imgsrv)
            if bench.wants("imgsrv_wrk") and bench.use_wrk:
                runners["imgsrv_wrk"] = _wrk_runner(bench, work, imgsrv)
            if bench.wants("imgsrv_c16") and name == "miss_4000_webp":
                job = miss_job(bench, dialect, work, LOW_USERS, seconds)
                runners["imgsrv_c16"] = _locust_runner(bench, f"imgsrv_c16_{name}", job, imgsrv)
        for impl, contender in (("vips", "ceiling"), ("pipeline", "pipeline")):
            if bench.wants(contender):
                runners[contender] = _ceiling_runner(bench, impl, work)
        if thumbor is not None:
            job = miss_job(bench, bench.dialect("thumbor"), work, SYNC_USERS, seconds)
            runners["thumbor"] = _locust_runner(bench, f"thumbor_{name}", job, thumbor)
        contenders = _merged(bench, runners)
        if "imgsrv_c16" in contenders:
            contenders["imgsrv_c16"]["extra"]["concurrency"] = LOW_USERS
        if imgsrv is not None and "imgsrv" in contenders:
            extra = contenders["imgsrv"]["extra"]
            if name == "miss":
                # Memory after the load, once what expires by itself has expired.
                time.sleep(bench.timing.settle_s)
                extra["rss_idle_mb"] = round(idle, 1)
                extra["rss_after_load_mb"] = round(tree_rss_mb(imgsrv.roots), 1)
                extra["l1_mb_after_load"] = round(bench.l1_mb(imgsrv.url), 1)
            if len(work.transforms) == 1:
                probe = bench.dialect("imgsrv").miss_path(work.transforms[0], "size-check")
                extra["output_bytes"] = len(_fetch(imgsrv.url + probe)[0])
    return _entry(SYNC_USERS, bench.timing.rounds * seconds, contenders, bench)


def _locust_runner(bench: Bench, label: str, job: LocustJob, server: servers.Server) -> Runner:
    target = bench.target(server)
    return lambda: bench.locust(label, job, target)


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
            body.write_bytes(_fetch(imgsrv.url + paths["imgsrv"][0])[0])
        else:
            body.write_bytes((bench.work / "sources" / "probe.jpg").read_bytes())
        bare = None
        if bench.wants("bare"):
            bare = servers.start_bare(bench.work, bench.workers, body)
            stack.callback(bare.stop)
            bench.commands["bare"] = bare.command
        if thumbor is not None:
            bench.warm(thumbor.url, paths["thumbor"], 1.0, thumbor.roots)
        runners: dict[str, Runner] = {}
        targets: list[tuple[str, Target, str]] = []
        if imgsrv is not None:
            targets.append(("imgsrv", bench.target(imgsrv), "imgsrv"))
        if bare is not None:
            targets.append(("bare", bench.target(bare), "imgsrv"))
        if thumbor is not None:
            targets.append(("thumbor", bench.target(thumbor), "thumbor"))
        if bench.wants("loadgen"):
            origin = Target(bench.origin.url, [bench.origin.process.pid])
            targets.append(("loadgen", origin, "probe"))
        for name, target, dialect in targets:
            runners[name] = _hit_runner(bench, name, target, paths[dialect])
        contenders = _merged(bench, runners)
        if imgsrv is not None:
            contenders["imgsrv"]["extra"]["l1_mb_after_load"] = round(bench.l1_mb(imgsrv.url), 1)
    return _entry(SYNC_USERS, bench.timing.rounds * seconds, contenders, bench)


def _hit_runner(bench: Bench, name: str, target: Target, ranked: list[str]) -> Runner:
    label = f"{name}_hit"
    if bench.use_wrk:
        # The same Zipf draw (same seed) for every contender: identical request streams.
        sequence = workload.zipf_sequence(ranked, 50_000)
        paths = workload.write_lines(bench.work / "paths" / f"{label}.txt", sequence)
        job = WrkJob(paths, SYNC_USERS, bench.timing.hit_s)
        return lambda: bench.wrk(label, target, job)
    ranks = workload.write_lines(bench.work / "paths" / f"{label}-ranked.txt", ranked)
    locust_job = LocustJob(
        ["HitUser"], SYNC_USERS, bench.timing.hit_s, bench.timing.warmup_s,
        {"BENCH_HIT_PATHS": str(ranks)}, processes=2,
        max_requests=int(50_000 * (bench.timing.hit_s + bench.timing.warmup_s)),
    )  # fmt: skip
    return lambda: bench.locust(label, locust_job, target)


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
            job = _mixed_job(bench, "imgsrv")
            runners["imgsrv"] = _locust_runner(bench, "imgsrv_mixed", job, imgsrv)
        if bench.wants("loadgen"):
            origin = Target(bench.origin.url, [bench.origin.process.pid])
            probe_job = _mixed_job(bench, "probe")
            runners["loadgen"] = lambda: bench.locust("loadgen_mixed", probe_job, origin)
        contenders = _merged(bench, runners)
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


# --------------------------------------------------------------------------- fairness


def fairness(bench: Bench) -> Scenario:
    """Client A keeps 64 misses in flight, client B sends 4 per second; B alone for reference.

    The clients are told apart by API key (two tenants). Contenders: ``imgsrv_a`` and
    ``imgsrv_b`` (the two clients of one run) and ``imgsrv_b_idle`` (B alone on the same
    server, interleaved with the shared runs).
    """
    seconds = bench.timing.miss_s
    users = FAIR_A_USERS + FAIR_B_USERS
    if not bench.wants("imgsrv"):
        return skipped(users, "imgsrv not selected")
    with ExitStack() as stack:
        imgsrv = _started(stack, bench.start_imgsrv())
        assert imgsrv is not None
        env = {
            "BENCH_FAIR_A_KEY": servers.JOBS_API_KEY,
            "BENCH_FAIR_B_KEY": servers.CLIENT_B_API_KEY,
            "BENCH_FAIR_A_USERS": str(FAIR_A_USERS),
            "BENCH_FAIR_B_USERS": str(FAIR_B_USERS),
            "BENCH_FAIR_B_RATE": str(FAIR_B_RATE),
        }
        template = [bench.dialect("imgsrv").miss_template()]
        both = bench.miss_job(template, users, seconds, user_classes=["FairAUser", "FairBUser"],
                              env=env, separate={"FairAUser": FAIR_A_USERS,
                                                 "FairBUser": FAIR_B_USERS})  # fmt: skip
        alone = bench.miss_job(template, FAIR_B_USERS, seconds, user_classes=["FairBUser"],
                               env=env)  # fmt: skip
        target = bench.target(imgsrv)
        parts = {"imgsrv_a": "a", "imgsrv_b": "b"}
        runners: dict[str, Runner] = {
            "imgsrv_b_idle": lambda: bench.locust("imgsrv_fairness_b_idle", alone, target),
            "imgsrv_a+b": lambda: bench.locust_split("imgsrv_fairness", both, target, parts),
        }
        contenders = _merged(bench, runners)
    order = ("imgsrv_a", "imgsrv_b", "imgsrv_b_idle")
    ordered: dict[str, Any] = {k: contenders[k] for k in order if k in contenders}
    return _entry(users, bench.timing.rounds * seconds, ordered, bench)


# --------------------------------------------------------------------------- overload

def overload(bench: Bench, name: str) -> Scenario:
    """A miss workload at c=256: what cannot be served in time must be shed with 503."""
    work = MISS_WORKLOADS[OVERLOAD_SCENARIOS[name]]
    seconds = bench.timing.overload_s * work.round_factor
    if not bench.wants("imgsrv"):
        return skipped(OVERLOAD_USERS, "imgsrv not selected")
    with ExitStack() as stack:
        imgsrv = _started(stack, bench.start_imgsrv())
        assert imgsrv is not None
        job = miss_job(bench, bench.dialect("imgsrv"), work, OVERLOAD_USERS, seconds, shed_ok=True)
        runners = {"imgsrv": _locust_runner(bench, f"imgsrv_{name}", job, imgsrv)}
        if bench.wants("imgsrv_wrk") and bench.use_wrk:
            # The same load from wrk, whose own CPU does not grow with its connections (locust's
            # doubles at c=256, on the cores the server shares).
            runners["imgsrv_wrk"] = _wrk_runner(bench, work, imgsrv, seconds)
        if name == "overload" and bench.wants("loadgen"):
            # The same users against nginx's ready bytes: the latency floor of the load
            # generator itself at this concurrency, which every 503 timing includes.
            origin = Target(bench.origin.url, [bench.origin.process.pid])
            probe = bench.miss_job(
                [bench.dialect("probe").miss_template()], OVERLOAD_USERS, seconds
            )
            runners["loadgen"] = lambda: bench.locust("loadgen_overload", probe, origin)
        contenders = _merged(bench, runners)
        contenders["imgsrv"]["extra"]["workload"] = work.name
    if name == "overload":
        # A refusal's CPU apart from the successes': a server that refuses everything.
        bench.log("  CPU per refusal, measured directly")
        contenders["imgsrv"]["extra"]["refusal_direct"] = refusals.measure(bench, seconds)
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
        contenders = _merged(bench, runners)
        extra = contenders["imgsrv"]["extra"]
        extra["job_api_probe_status"] = status
        # What the in-process job workers got done meanwhile (counters since start).
        extra["job_metrics"] = bench.metric_values(
            imgsrv.url, r"imgsrv_jobs?_(submitted|finished|variants)_total\{.*\}"
        )
    extra["decode_once"] = decode_once(bench)
    return _entry(SYNC_USERS, bench.timing.rounds * seconds, contenders, bench)


def _miss_scenario(name: str) -> Callable[[Bench], Scenario]:
    return lambda bench: miss(bench, name)


def _overload_scenario(name: str) -> Callable[[Bench], Scenario]:
    return lambda bench: overload(bench, name)
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
    **{name: _miss_scenario(name) for name in MISS_WORKLOADS},
    "hit": hit,
    "mixed": mixed,
    "fairness": fairness,
    **{name: _overload_scenario(name) for name in OVERLOAD_SCENARIOS},
    "jobs": jobs,
}

# --smoke: imgsrv alone over a subset that goes through every code path of the harness
# (locust and wrk misses, HEAD and revalidations, hits, two clients, shedding, jobs).
SMOKE_SCENARIOS = ("miss", "cdn_mix", "hit", "fairness", "overload", "jobs")
