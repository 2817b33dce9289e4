"""Cache and traffic numbers of this instance, read from its own Prometheus metrics.

The dashboard and ``GET /v1/stats`` show them. Counters are merged across the instance's
processes (as ``/metrics`` serves them); rates and latency percentiles come from the change
between the sample taken now and one taken :data:`MIN_WINDOW` to :data:`MAX_WINDOW` seconds
earlier (every look takes a sample), and are None until there is such an earlier sample. Hit
ratios count since the start. Fleet-wide views belong to Prometheus; this is one instance.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from imgsrv.metrics import render_metrics

MIN_WINDOW = 2.0
MAX_WINDOW = 120.0
IMAGE_ROUTES = frozenset({"image_path", "image_query"})


@dataclass(frozen=True, slots=True)
class Sample:
    """The counters that matter, at one moment."""

    at: float
    cache: dict[tuple[str, str], float]
    l1_bytes: float
    requests: float
    shed: float
    buckets: dict[float, float]  # image request latency: upper bound -> cumulative count
    egress: dict[str, float]


@dataclass
class TrafficSampler:
    """Recent samples of this process (each process keeps its own)."""

    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=64))

    def take(self) -> Sample:
        sample = read_sample(render_metrics()[0].decode(), time.monotonic())
        while self.samples and sample.at - self.samples[0].at > MAX_WINDOW:
            self.samples.popleft()
        self.samples.append(sample)
        return sample

    def baseline(self, now: Sample) -> Sample | None:
        """The newest earlier sample at least MIN_WINDOW old."""
        for earlier in reversed(self.samples):
            if now.at - earlier.at >= MIN_WINDOW:
                return earlier
        return None


def read_sample(text: str, at: float) -> Sample:
    cache: dict[tuple[str, str], float] = {}
    buckets: dict[float, float] = {}
    egress: dict[str, float] = {}
    l1_bytes = requests = shed = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "imgsrv_cache_events_total":
                key = (labels.get("tier", ""), labels.get("event", ""))
                cache[key] = cache.get(key, 0.0) + s.value
            elif s.name == "imgsrv_l1_bytes":
                l1_bytes += s.value
            elif s.name == "imgsrv_http_requests_total":
                requests += s.value
                if labels.get("status") == "503":
                    shed += s.value
            elif s.name == "imgsrv_http_request_duration_seconds_bucket":
                if labels.get("route") in IMAGE_ROUTES:
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + s.value
            elif s.name.startswith("imgsrv_egress") and not s.name.endswith("_created"):
                egress[s.name] = egress.get(s.name, 0.0) + s.value
    return Sample(at, cache, l1_bytes, requests, shed, buckets, egress)


def _ratio(hits: float, misses: float) -> float | None:
    total = hits + misses
    return round(hits / total, 4) if total else None


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile (seconds) of a cumulative histogram, interpolated inside its bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, count
    return lower


def traffic_stats(sampler: TrafficSampler) -> dict[str, object]:
    """The numbers of ``GET /v1/stats`` and the dashboard's cache and traffic view."""
    now = sampler.take()
    before = sampler.baseline(now)
    cache = now.cache
    body: dict[str, object] = {
        "window_s": None,
        "l1_hit_ratio": _ratio(cache.get(("l1", "hit"), 0.0), cache.get(("l1", "miss"), 0.0)),
        "l2_hit_ratio": _ratio(cache.get(("l2", "hit"), 0.0), cache.get(("l2", "miss"), 0.0)),
        "l1_bytes": now.l1_bytes,
        "requests_per_s": None,
        "p50_ms": None,
        "p99_ms": None,
        "shed_per_s": None,
        "shed_ratio": None,
        "egress": now.egress,
    }
    if before is not None:
        window = now.at - before.at
        requests = now.requests - before.requests
        shed = now.shed - before.shed
        delta = {
            bound: count - before.buckets.get(bound, 0.0) for bound, count in now.buckets.items()
        }
        p50, p99 = quantile(delta, 0.5), quantile(delta, 0.99)
        body.update(
            window_s=round(window, 3),
            requests_per_s=round(requests / window, 3),
            shed_per_s=round(shed / window, 3),
            shed_ratio=round(shed / requests, 4) if requests else None,
            p50_ms=round(p50 * 1000, 3) if p50 is not None else None,
            p99_ms=round(p99 * 1000, 3) if p99 is not None else None,
        )
    return body
