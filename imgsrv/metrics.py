"""Every Prometheus metric, defined once.

Under gunicorn the server runs several processes; ``PROMETHEUS_MULTIPROC_DIR`` (set by
``imgsrv serve`` before the workers start) makes prometheus_client write per-process files that
:func:`render_metrics` merges, so one scrape shows the whole server.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
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
OVERLOAD_REJECTIONS = Counter(
    "imgsrv_overload_rejections_total", "Requests refused with 503 because the pool was full"
)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text for a scrape, merged across processes when multiprocess mode is on."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


CACHE_EVENTS = Counter(
    "imgsrv_cache_events_total",
    "Cache lookups and evictions per tier (tier=l1|l2|source, event=hit|miss|eviction|store)",
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
    multiprocess_mode="max",
)
COALESCED = Counter(
    "imgsrv_coalesced_total",
    "Requests that shared another request's render or download (kind=render|source|lock)",
    ["kind"],
)
