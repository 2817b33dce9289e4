"""One contender's measurements: per round, then merged over the interleaved rounds.

The results format gives every contender the same seven numbers (``rps``, ``cpu_ms_per_ok``,
``p50_ms``, ``p95_ms``, ``p99_ms``, ``errors``, ``peak_rss_mb``); :class:`Round` holds what one
timed run produced, :func:`merge` turns the rounds into those numbers plus an ``extra`` dict
of what a reader needs to judge them (per-round rates, shed requests, CPU, bytes, memory).

Definitions, the same for every contender:

* ``rps``: successful responses per second of measured time (200; in ``cdn_mix`` also 304,
  the answer to a revalidation);
* ``cpu_ms_per_ok``: user + system CPU of the server's whole process tree (plus the bench's
  Redis for imgsrv) over exactly the measured window, per successful response; for the
  ``ceiling`` and ``pipeline`` loops, CPU per transform;
* ``p50/p95/p99_ms``: latency of successful responses, client side (queueing included);
* ``errors``: every other outcome (other status, timeout, connection error); in the
  ``overload`` scenarios 503 answers are the intended outcome and are reported as ``shed``
  in ``extra`` instead of as errors.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; 0.0 for no values."""
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low))


@dataclass
class Round:
    """What one timed run of one contender produced."""

    ok: int
    seconds: float
    latencies_ms: list[float] | None = None  # raw samples, when the tool gives them
    p50_ms: float = 0.0  # used when there are no raw samples (wrk)
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    shed: int = 0
    shed_latencies_ms: list[float] = field(default_factory=list)
    shed_without_retry_after: int = 0
    timeouts: int = 0
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    server_cpu_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0
    server_cpu_s: float = 0.0  # CPU seconds of the server tree in the measured window
    redis_cpu_s: float = 0.0  # the bench's Redis in the same window (imgsrv only)
    not_modified: int = 0  # 304 answers among the successful ones
    render_latencies_ms: list[float] = field(default_factory=list)  # successes but 304s
    ok_bytes: int = 0  # body bytes of the successful responses
    bodies: int = 0  # successful responses that had a body (not HEAD, not 304)
    retry_after_s: list[float] = field(default_factory=list)  # Retry-After of every 503
    retry_after_missing: int = 0  # 503s without a Retry-After
    stalls_ms: list[float] = field(default_factory=list)  # the machine's stalls in the window
    # latencies of the successes that overlapped none of those stalls (locust only)
    clear_latencies_ms: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentiles(self) -> tuple[float, float, float]:
        if self.latencies_ms is None:
            return self.p50_ms, self.p95_ms, self.p99_ms
        values = sorted(self.latencies_ms)
        return percentile(values, 50), percentile(values, 95), percentile(values, 99)


def _r(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def merge(rounds: Sequence[Round]) -> dict[str, Any]:
    """The result entry of a contender from its rounds (see the module docstring)."""
    if not rounds:
        raise ValueError("no rounds to merge")
    ok = sum(r.ok for r in rounds)
    seconds = sum(r.seconds for r in rounds)
    if all(r.latencies_ms is not None for r in rounds):
        merged = sorted(v for r in rounds for v in (r.latencies_ms or ()))
        p50, p95, p99 = (percentile(merged, q) for q in (50, 95, 99))
    else:
        # Only summaries (wrk): the median round's percentile is the robust middle.
        p50 = statistics.median(r.percentiles()[0] for r in rounds)
        p95 = statistics.median(r.percentiles()[1] for r in rounds)
        p99 = statistics.median(r.percentiles()[2] for r in rounds)
    cpu_s = sum(r.server_cpu_s + r.redis_cpu_s for r in rounds)
    entry: dict[str, Any] = {
        "rps": _r(ok / seconds if seconds else 0.0),
        "cpu_ms_per_ok": _r(1000 * cpu_s / ok if ok else 0.0, 3),
        "p50_ms": _r(p50),
        "p95_ms": _r(p95),
        "p99_ms": _r(p99),
        "errors": sum(r.errors for r in rounds),
        "peak_rss_mb": _r(max(r.peak_rss_mb for r in rounds), 1),
    }
    extra: dict[str, Any] = {
        "rounds_rps": [_r(r.rps, 1) for r in rounds],
        "requests_ok": ok,
        "measured_s": _r(seconds, 1),
        "peak_pss_mb": _r(max(r.peak_pss_mb for r in rounds), 1),
        "server_cpu_pct": _r(statistics.mean(r.server_cpu_pct for r in rounds), 1),
        "loadgen_cpu_pct": _r(statistics.mean(r.loadgen_cpu_pct for r in rounds), 1),
        "other_cpu_pct": _r(statistics.mean(r.other_cpu_pct for r in rounds), 1),
        "timeouts": sum(r.timeouts for r in rounds),
        "server_cpu_s": _r(cpu_s, 3),
        "bytes_per_response": _r(sum(r.ok_bytes for r in rounds) / ok if ok else 0.0, 1),
    }
    stalls = [v for r in rounds for v in r.stalls_ms]
    if stalls:
        extra["host_stalls"] = {"count": len(stalls), "max_ms": _r(max(stalls), 0),
                                "total_ms": _r(sum(stalls), 0)}  # fmt: skip
        clear = sorted(v for r in rounds for v in (r.clear_latencies_ms or ()))
        if clear:
            extra["clear_of_stalls"] = {"responses": len(clear),
                                        "p50_ms": _r(percentile(clear, 50)),
                                        "p95_ms": _r(percentile(clear, 95)),
                                        "p99_ms": _r(percentile(clear, 99))}  # fmt: skip
    redis_s = sum(r.redis_cpu_s for r in rounds)
    if redis_s:
        extra["redis_cpu_ms_per_ok"] = _r(1000 * redis_s / ok if ok else 0.0, 3)
    not_modified = sum(r.not_modified for r in rounds)
    if not_modified:
        # Revalidations answered 304 cost no transform: CPU per render leaves them out.
        extra["not_modified"] = not_modified
        renders = ok - not_modified
        if renders:
            extra["cpu_ms_per_render"] = _r(1000 * cpu_s / renders, 3)
        rendered = sorted(v for r in rounds for v in r.render_latencies_ms)
        if rendered:
            for q in (50, 95, 99):
                extra[f"render_p{q}_ms"] = _r(percentile(rendered, q))
    bodies = sum(r.bodies for r in rounds)
    if bodies and bodies != ok:
        # HEAD and 304 answers carry no body: what one body weighs, for comparison.
        extra["bytes_per_body"] = _r(sum(r.ok_bytes for r in rounds) / bodies, 1)
    extra.update(_retry_after(rounds))
    shed = sum(r.shed for r in rounds)
    if shed:
        shed_ms = sorted(v for r in rounds for v in r.shed_latencies_ms)
        extra["shed"] = shed
        extra["shed_per_s"] = _r(shed / seconds if seconds else 0.0, 1)
        extra["shed_p50_ms"] = _r(percentile(shed_ms, 50))
        extra["shed_p99_ms"] = _r(percentile(shed_ms, 99))
        extra["shed_without_retry_after"] = sum(r.shed_without_retry_after for r in rounds)
    for r in rounds:
        for key, value in r.extra.items():
            if isinstance(value, dict) and isinstance(extra.get(key), dict):
                # Counts per status (or request kind): add them up over the rounds.
                for k, v in value.items():
                    extra[key][k] = extra[key].get(k, 0) + v
            else:
                extra[key] = value.copy() if isinstance(value, dict) else value
    entry["extra"] = extra
    return entry


def _retry_after(rounds: Sequence[Round]) -> dict[str, Any]:
    """What the 503 answers said in Retry-After (nothing when there was no 503)."""
    values = sorted(v for r in rounds for v in r.retry_after_s)
    missing = sum(r.retry_after_missing for r in rounds)
    if not values and not missing:
        return {}
    summary: dict[str, Any] = {"responses": len(values) + missing, "missing": missing}
    if values:
        summary.update(
            min_s=_r(values[0]), median_s=_r(statistics.median(values)), max_s=_r(values[-1])
        )
    return {"retry_after": summary}
