"""Every Prometheus metric, defined once.

Under gunicorn the server runs several processes; ``PROMETHEUS_MULTIPROC_DIR`` (set by
``imgsrv serve`` before the workers start) makes prometheus_client write per-process files that
:func:`render_metrics` merges, so one scrape shows the whole server.
"""

from __future__ import annotations

import bisect
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("imgsrv_http_requests_total", "HTTP requests answered", ["route", "status"])
REQUEST_SECONDS = Histogram(
    "imgsrv_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
FETCH_SECONDS = Histogram(
    "imgsrv_source_fetch_duration_seconds", "Time to download a source", buckets=LATENCY_BUCKETS
)
SOURCE_BYTES = Counter("imgsrv_source_bytes_total", "Bytes downloaded from sources")
SOURCE_ERRORS = Counter("imgsrv_source_errors_total", "Failed source fetches", ["reason"])
TRANSFORM_SECONDS = Histogram(
    "imgsrv_transform_duration_seconds",
    "Time libvips spends on one transform",
    ["format"],
    buckets=LATENCY_BUCKETS,
)
TRANSFORM_ERRORS = Counter("imgsrv_transform_errors_total", "Failed transforms", ["reason"])
POOL_ADMITTED = Gauge(
    "imgsrv_pool_admitted",
    "Transforms running or waiting for a thread",
    multiprocess_mode="livesum",
)
POOL_THREADS = Gauge(
    "imgsrv_pool_threads",
    "Transform threads (the pool's capacity; imgsrv_pool_admitted above it are waiting)",
    multiprocess_mode="livesum",
)
POOL_WAIT_SECONDS = Histogram(
    "imgsrv_pool_wait_seconds",
    "Time a transform waited for a pool thread once it was ready to run",
    buckets=LATENCY_BUCKETS,
)
CPU_SECONDS = Counter(
    "imgsrv_cpu_seconds_total",
    "CPU time (user and system, every thread) used by imgsrv's serving processes",
)
CPU_CORES = Gauge(
    "imgsrv_cpu_cores",
    "CPUs the container may use (cgroup quota, else affinity): what CPU utilisation is of",
    multiprocess_mode="livemax",
)


class BatchedCounts:
    """Counter increments and histogram observations kept in plain numbers and added to the
    metrics in batches.

    In multiprocess mode every increment writes a memory-mapped file (a lock, a pid check, a
    struct pack), and a histogram observation writes two; per cache hit that was as much as
    the rest of the bookkeeping. Counts reach the metrics when :meth:`flush` runs: twice a
    second from the runtime, before every scrape and at shutdown.
    """

    def __init__(self) -> None:
        self._pending: dict[Any, int] = {}
        self._observed: dict[Any, _Observations] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def add(self, child: Any, amount: int = 1) -> None:
        """Count ``amount`` for ``child`` (a labelled counter, or a counter without labels)."""
        self._pending[child] = self._pending.get(child, 0) + amount

    def observe(self, child: Any, amount: float) -> None:
        """Observe ``amount`` on ``child`` (a labelled histogram, or one without labels)."""
        pending = self._observed.get(child)
        if pending is None:
            pending = self._observed[child] = _Observations(child)
        pending.add(amount)

    def count(self, metric: Any, *labels: str, amount: int = 1) -> None:
        """Count ``amount`` for the child of ``metric`` with ``labels`` (looked up once)."""
        self.add(self._child(metric, labels), amount)

    def time(self, metric: Any, seconds: float, *labels: str) -> None:
        """Observe ``seconds`` on the child of histogram ``metric`` with ``labels``."""
        self.observe(self._child(metric, labels), seconds)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels) if labels else metric
        return child

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for child, count in pending.items():
            child.inc(count)
        observed, self._observed = self._observed, {}
        for observations in observed.values():
            observations.write()


class _Observations:
    """A histogram child's observations since the last flush: their sum and bucket counts.

    Written through the child's own bucket and sum values, which is what ``observe`` does
    one observation at a time.
    """

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def add(self, amount: float) -> None:
        self.total += amount
        # The first bucket whose upper bound is not below the amount (the last is +Inf).
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1

    def write(self) -> None:
        self.child._sum.inc(self.total)
        for bucket, count in zip(self.child._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)


BATCHED = BatchedCounts()


def render_metrics() -> tuple[bytes, str]:
    """The exposition text for a scrape, merged across processes when multiprocess mode is on."""
    BATCHED.flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


CACHE_EVENTS = Counter(
    "imgsrv_cache_events_total",
    "Cache events per tier (tier=l1|l2|source, event=hit|miss|eviction|expiry|store)",
    ["tier", "event"],
)
L1_BYTES = Gauge(
    "imgsrv_l1_bytes", "Bytes held by the L1 memory cache", multiprocess_mode="livesum"
)
L2_SECONDS = Histogram(
    "imgsrv_l2_duration_seconds", "Redis L2 call latency", ["op"], buckets=LATENCY_BUCKETS
)
L2_ERRORS = Counter("imgsrv_l2_errors_total", "Failed Redis L2 calls", ["op"])
L2_SKIPPED = Counter(
    "imgsrv_l2_skipped_total", "Redis L2 calls skipped because the circuit breaker is open"
)
BREAKER_OPEN = Gauge(
    "imgsrv_redis_breaker_open",
    "1 while the Redis circuit breaker is open",
    # live: a worker that died with its breaker open must not keep the gauge at 1
    multiprocess_mode="livemax",
)
COALESCED = Counter(
    "imgsrv_coalesced_total",
    "Requests that shared another request's render or download (kind=render|source|lock)",
    ["kind"],
)

# --- jobs
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

JOBS_QUEUED = Gauge(
    "imgsrv_jobs_queued",
    "Jobs ready to start, per priority, in the shared queue (scale workers on this)",
    ["priority"],
    multiprocess_mode="mostrecent",
)
JOBS_DELAYED = Gauge(
    "imgsrv_jobs_delayed",
    "Queued jobs waiting for their start time or a retry backoff",
    multiprocess_mode="mostrecent",
)
JOBS_RUNNING = Gauge(
    "imgsrv_jobs_running", "Jobs held by a worker's lease", multiprocess_mode="mostrecent"
)
JOB_CALLBACKS_DUE = Gauge(
    "imgsrv_job_callbacks_due",
    "Callbacks waiting for delivery (first tries and retries)",
    multiprocess_mode="mostrecent",
)
JOBS_OLDEST_WAIT = Gauge(
    "imgsrv_jobs_oldest_wait_seconds",
    "Seconds the longest-waiting ready job of each priority has been due (0 = none waiting)",
    ["priority"],
    multiprocess_mode="mostrecent",
)
JOB_QUEUE_WAIT = Histogram(
    "imgsrv_job_queue_wait_seconds",
    "Time from a job's due time to its first start",
    buckets=JOB_BUCKETS,
)
JOBS_SUBMITTED = Counter("imgsrv_jobs_submitted_total", "Jobs accepted", ["priority"])
JOBS_FINISHED = Counter(
    "imgsrv_jobs_finished_total",
    "Jobs that reached a final state (outcome=succeeded|failed|cancelled)",
    ["outcome"],
)
JOB_SECONDS = Histogram(
    "imgsrv_job_duration_seconds",
    "Time from a job's submission to its final state",
    ["outcome"],
    buckets=JOB_BUCKETS,
)
JOB_ATTEMPTS = Histogram(
    "imgsrv_job_attempts", "Attempts a finished job took", buckets=(1, 2, 3, 4, 5, 10)
)
JOB_RETRIES = Counter(
    "imgsrv_job_retries_total", "Failed attempts queued again after a backoff", ["reason"]
)
JOB_LEASES_REAPED = Counter(
    "imgsrv_job_leases_reaped_total",
    "Running jobs taken back from a worker that stopped renewing its lease",
)
JOB_VARIANTS = Counter(
    "imgsrv_job_variants_total", "Variants rendered by job workers (cache=miss|l2)", ["cache"]
)
JOB_CALLBACKS = Counter(
    "imgsrv_job_callbacks_total",
    "Callback deliveries (outcome=delivered|retry|failed)",
    ["outcome"],
)
JOB_ACCEPT_WAIT = Histogram(
    "imgsrv_job_accept_duration_seconds",
    "Time to queue a submitted job and have a replica confirm it (Redis WAIT)",
    buckets=LATENCY_BUCKETS,
)
JOB_ACCEPT_UNCONFIRMED = Counter(
    "imgsrv_job_accept_unconfirmed_total",
    "Submissions answered 503 because no replica confirmed them within job_accept_timeout",
)

# --- instance lifecycle
DRAINING = Gauge(
    "imgsrv_draining",
    "1 while this process drains after a stop signal (readiness 503, still serving)",
    multiprocess_mode="livemax",
)

# --- egress (image body bytes served; see imgsrv.egress)
EGRESS_BYTES = Counter(
    "imgsrv_egress_bytes_total",
    "Image body bytes served (tenant = the API key's tenant, else anonymous)",
    ["format", "tenant"],
)
EGRESS_MONTH_BYTES = Gauge(
    "imgsrv_egress_month_bytes",
    "Image bytes served this calendar month (UTC) by every instance, as counted in Redis",
    multiprocess_mode="livemostrecent",
)
EGRESS_BUDGET_BYTES = Gauge(
    "imgsrv_egress_budget_bytes",
    "The monthly egress budget in bytes (0 = none)",
    multiprocess_mode="livemax",
)
EGRESS_SAVER_AT_BYTES = Gauge(
    "imgsrv_egress_saver_at_bytes",
    "Bytes served in a month from which saver mode makes new renders smaller (0 = never)",
    multiprocess_mode="livemax",
)
EGRESS_SAVER = Gauge(
    "imgsrv_egress_saver_active",
    "1 while saver mode is on: new renders use lower default qualities",
    multiprocess_mode="livemax",
)


def serve_metrics(host: str, port: int) -> None:
    """Serve ``/metrics`` on ``host:port`` from a background thread (for ``imgsrv worker``)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, host, registry=registry)


SHARED_DECODES = Counter(
    "imgsrv_shared_decodes_total",
    "Source decodes shared by the variants of a set (jobs): one per set, however many variants",
)
JOBS_MERGED = Counter(
    "imgsrv_jobs_merged_total",
    "Jobs whose variants were rendered from a decode shared with another job of the same source",
)
WORKERS_ONLINE = Gauge(
    "imgsrv_workers_online",
    "Worker processes (serving processes and imgsrv worker) whose registry heartbeat is current",
    multiprocess_mode="mostrecent",
)
