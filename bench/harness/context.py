"""What the scenarios share: timings, the running origin and Redis, and interleaved rounds.

Numbers on a shared 2-core machine drift over minutes, so contenders are never measured
one after the other in long blocks: each round runs every contender once for the same time,
and the order rotates from round to round. Servers of a scenario run side by side (an idle
server costs nothing measurable) and imgsrv is restarted for every scenario, so one
scenario's cache contents or memory never colour the next.

The load generator, the origin and Redis share the two cores with the server under test;
the CPU each used is recorded per round (``extra.server_cpu_pct``/``loadgen_cpu_pct``), so
a reader can see how much of the machine the server had. The ``ceiling`` has no client,
origin or HTTP at all: the gap between it and imgsrv includes what serving over HTTP costs
on the same cores, which is the point of the comparison.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import loadgen, pyspy, servers, versions, workload
from bench.harness.ceiling import Encoders
from bench.harness.loadgen import LocustJob, Target, WrkJob
from bench.harness.origin import Origin
from bench.harness.proctree import machine_busy_percent
from bench.harness.stats import Round
from bench.harness.workload import Dialect

SYNC_USERS = 32
OVERLOAD_USERS = 256
# Busy CPU (percent of one core) under which the machine counts as quiet between rounds.
QUIET_BUSY_PCT = 25.0


@dataclass(frozen=True)
class Timing:
    """How long each contender runs per round, and how many rounds."""

    rounds: int
    miss_s: float
    hit_s: float
    warmup_s: float
    overload_s: float
    jobs_s: float
    # Pause before "memory after load" is read; the full run waits past imgsrv's 30 s source
    # cache TTL, so that what is left is what the server keeps, not what expires anyway.
    settle_s: float
    quiet_wait_s: float  # longest wait for a quiet machine before each round
    hit_urls: int = workload.HIT_URLS  # size of the hit set (warming renders each once)


TIMINGS = {
    "full": Timing(rounds=3, miss_s=15, hit_s=10, warmup_s=3, overload_s=12, jobs_s=20,
                   settle_s=35, quiet_wait_s=15),
    "quick": Timing(rounds=1, miss_s=4, hit_s=3, warmup_s=1, overload_s=3, jobs_s=4,
                    settle_s=2, quiet_wait_s=2, hit_urls=100),
    "smoke": Timing(rounds=1, miss_s=2, hit_s=2, warmup_s=0.5, overload_s=2, jobs_s=2,
                    settle_s=0.5, quiet_wait_s=0, hit_urls=30),
}  # fmt: skip

Runner = Callable[[], Round | dict[str, Round]]
"""One contender's round; a run of several clients returns a Round per client."""


@dataclass
class Profile:
    """A py-spy recording in progress and the thread CPU times at its start."""

    files: list[Path]
    pids: list[int]
    cpu_before: dict[tuple[int, int], tuple[str, float]]
    started: float


@dataclass
class Bench:
    """Everything the scenarios share: folders, origin, Redis, options and the record."""

    work: Path
    sources: dict[str, Path]
    origin: Origin
    redis: servers.Server
    workers: int
    timing: Timing
    thumbor_venv: Path | None
    use_wrk: bool
    contenders: frozenset[str]
    imgsrv_env: dict[str, str] = field(default_factory=dict)
    py_spy: Path | None = None
    profile_dir: Path | None = None
    commands: dict[str, str] = field(default_factory=dict)
    imgsrv_source: str = ""
    log: Callable[[str], None] = print
    thumbor_avif: bool = True  # thumbor's automatic format is AVIF (else WebP)
    encoders: Encoders | None = None  # imgsrv's encoder defaults (thumbor is matched to them)

    # ------------------------------------------------------------------ servers and rounds

    def dialect(self, name: str) -> Dialect:
        if name == "thumbor" and self.thumbor_avif and self.encoders is not None:
            return Dialect(name, self.origin.url, f"quality({self.encoders.avif_quality})")
        return Dialect(name, self.origin.url)

    def target(self, server: servers.Server) -> Target:
        """What a round of ``server`` measures; imgsrv's CPU includes the bench's Redis."""
        redis = [self.redis.process.pid] if server.name == "imgsrv" else []
        return Target(server.url, server.roots, redis)

    def wants(self, contender: str) -> bool:
        return contender in self.contenders

    def start_imgsrv(self) -> servers.Server:
        """Start imgsrv; remember which state of its source code this scenario measures."""
        self.imgsrv_source = versions.source_digest()
        server = servers.start_imgsrv(self.work, self.workers, self.redis.url, self.imgsrv_env)
        self.commands["imgsrv"] = server.command
        return server

    def start_thumbor(self, result_storage: bool) -> servers.Server | None:
        if self.thumbor_venv is None or not self.wants("thumbor"):
            return None
        effort = self.encoders.avif_effort if self.encoders is not None else 2
        server = servers.start_thumbor(
            self.work, self.thumbor_venv, self.workers, result_storage, self.thumbor_avif, effort
        )
        self.commands["thumbor_hit" if result_storage else "thumbor_miss"] = server.command
        return server

    def locust(self, label: str, job: LocustJob, target: Target) -> Round:
        self._record_locust(label, job)
        profile = self._profile(label, target.roots, job.warmup + job.seconds)
        result = loadgen.run_locust(job, target, self.work, label)
        self._finish_profile(label, profile)
        return result

    def locust_split(
        self, label: str, job: LocustJob, target: Target, parts: dict[str, str]
    ) -> dict[str, Round]:
        """One locust run of several clients (``parts``: contender -> request name)."""
        self._record_locust(label, job)
        profile = self._profile(label, target.roots, job.warmup + job.seconds)
        result = loadgen.run_locust_split(job, target, self.work, label, parts)
        self._finish_profile(label, profile)
        return result

    def _record_locust(self, label: str, job: LocustJob) -> None:
        env = " ".join(f"{k}={v}" for k, v in sorted(job.env.items()) if k != "BENCH_HIT_PATHS")
        command = " ".join(["locust", *loadgen.locust_command(job, "URL")[3:]])
        self.commands[f"locust_{label}"] = f"{env} {command}".strip()

    def wrk(self, label: str, target: Target, job: WrkJob) -> Round:
        self.commands[f"wrk_{label}"] = " ".join(
            loadgen.wrk_command("URL", job.requests_file, job.users, job.seconds, job.threads)
        )
        profile = self._profile(label, target.roots, job.seconds)
        result = loadgen.run_wrk(job, target, self.work, label)
        self._finish_profile(label, profile)
        return result

    def _profile(self, label: str, roots: Sequence[int], seconds: float) -> Profile | None:
        """Attach py-spy to imgsrv's workers for this round (only with --profile)."""
        if self.py_spy is None or self.profile_dir is None or not label.startswith("imgsrv"):
            return None
        pids = pyspy.worker_pids(roots[0])
        files = pyspy.start(self.py_spy, pids, seconds, self.work / "profiles", label)
        return Profile(files, pids, pyspy.thread_cpu(pids), time.monotonic())

    def _finish_profile(self, label: str, profile: Profile | None) -> None:
        if profile is None or self.profile_dir is None:
            return
        cpu = pyspy.thread_cpu_report(
            profile.cpu_before,
            pyspy.thread_cpu(profile.pids),
            time.monotonic() - profile.started,
        )
        files = profile.files
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(f.exists() for f in files):
            time.sleep(0.2)
        summary = cpu + pyspy.summarise(files)
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        target = self.profile_dir / f"{label}.txt"
        target.write_text(summary)
        self.log(f"profile of {label} written to {target}")

    def interleave(self, runners: dict[str, Runner]) -> dict[str, list[Round]]:
        """Run every contender once per round, rotating the order each round."""
        names = list(runners)
        rounds: dict[str, list[Round]] = {}
        for index in range(self.timing.rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                self.log(f"  round {index + 1}/{self.timing.rounds}: {name}")
                busy = self.wait_quiet()
                outcome = runners[name]()
                parts = outcome if isinstance(outcome, dict) else {name: outcome}
                for key, result in parts.items():
                    result.extra["busy_before_pct"] = round(busy, 1)
                    rounds.setdefault(key, []).append(result)
                    cpu = result.server_cpu_s + result.redis_cpu_s
                    per_ok = 1000 * cpu / result.ok if result.ok else 0.0
                    prefix = f"{key}: " if len(parts) > 1 else ""
                    self.log(
                        f"    {prefix}{result.rps:.1f} req/s, CPU {per_ok:.1f} ms/ok, p50/p99 "
                        f"{result.percentiles()[0]:.1f}/{result.percentiles()[2]:.1f} ms, "
                        f"errors {result.errors}, shed {result.shed}, peak RSS "
                        f"{result.peak_rss_mb:.0f} MiB"
                    )
        return rounds

    def wait_quiet(self) -> float:
        """Wait (bounded) until the machine is nearly idle; the busy % last seen.

        Between rounds nothing of the benchmark should run: a server still finishing the
        work the previous round queued, or a process outside the benchmark, would take
        CPU from the next contender. The wait is bounded so a busy machine slows the run
        down but never stalls it; the busy share is recorded with the round.
        """
        deadline = time.monotonic() + self.timing.quiet_wait_s
        busy = machine_busy_percent(0.5)
        while busy > QUIET_BUSY_PCT and time.monotonic() < deadline:
            self.log(f"    machine {busy:.0f}% busy before the round; waiting")
            busy = machine_busy_percent(1.0)
        return busy

    def miss_job(self, templates: list[str], users: int, seconds: float, **kw: Any) -> LocustJob:
        import json

        return LocustJob(
            user_classes=kw.pop("user_classes", ["MissUser"]),
            users=users,
            seconds=seconds,
            warmup=self.timing.warmup_s,
            env={"BENCH_MISS_TEMPLATES": json.dumps(templates), **kw.pop("env", {})},
            # A safety bound far above any rate this machine reaches.
            max_requests=int(5000 * (seconds + self.timing.warmup_s) + 1000),
            **kw,
        )

    # ------------------------------------------------------------------ memory

    @staticmethod
    def metric_values(url: str, pattern: str) -> dict[str, float]:
        """imgsrv's Prometheus samples whose name (with labels) matches ``pattern``."""
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        values: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name and not line.startswith("#") and re.fullmatch(pattern, name):
                values[name] = float(value)
        return values

    def l1_mb(self, url: str) -> float:
        """Bytes in imgsrv's L1 caches (all workers), from its Prometheus metrics."""
        values = self.metric_values(url, r"imgsrv_l1_bytes(\{.*\})?")
        return sum(values.values()) / 2**20

    # ------------------------------------------------------------------ warming

    def warm(self, url: str, paths: list[str], seconds: float, roots: list[int]) -> None:
        """Request every path once (8 at a time), then keep cycling them for ``seconds``.

        The cycling pass makes sure each worker process, not just one of them, has every
        hit URL in its own memory cache.
        """

        def fetch(path: str) -> int:
            with urllib.request.urlopen(url + path, timeout=60) as response:
                response.read()
                return int(response.status)

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(fetch, paths))
        bad = [s for s in statuses if s != 200]
        if bad:
            raise RuntimeError(f"warming {url}: {len(bad)} requests failed ({bad[:5]})")
        if seconds <= 0:
            return
        cycle = workload.write_lines(self.work / "paths" / "warm.txt", paths)
        if self.use_wrk:
            loadgen.run_wrk(WrkJob(cycle, SYNC_USERS, seconds), Target(url, roots), self.work)
        else:
            job = LocustJob(["HitUser"], SYNC_USERS, seconds, 0, {"BENCH_HIT_PATHS": str(cycle)})
            loadgen.run_locust(job, Target(url, roots), self.work, "warm")
