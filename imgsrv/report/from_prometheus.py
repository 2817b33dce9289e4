"""A review from Prometheus: counters' increase over the period, histograms' quantiles."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import httpx

from imgsrv.report.period import Period
from imgsrv.report.review import Review

IMAGES = 'route=~"image_path|image_query"'
DAY = dt.timedelta(days=1)


class PrometheusError(RuntimeError):
    """Prometheus could not be asked, or refused a query."""


def _window(start: dt.datetime, end: dt.datetime) -> str:
    return f"{max(1, math.ceil((end - start).total_seconds()))}s"


def _number(result: dict[str, Any]) -> float:
    return float(result["value"][1])


class _Queries:
    """Instant queries at ``at`` over the window ``window``, on series matching ``selector``."""

    def __init__(self, http: httpx.Client, selector: str, at: dt.datetime, window: str) -> None:
        self.http = http
        self.selector = selector
        self.at = at
        self.window = window

    def matching(self, extra: str = "") -> str:
        return "{" + ", ".join(p for p in (self.selector, extra) if p) + "}"

    def run(self, expr: str) -> list[dict[str, Any]]:
        params = {"query": expr, "time": str(self.at.timestamp())}
        try:
            answer = self.http.get("/api/v1/query", params=params)
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"cannot query Prometheus: {exc}") from exc
        if answer.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {expr!r}: {body.get('error', answer.text)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def increase(self, metric: str, by: str = "", extra: str = "") -> dict[str, float]:
        """``sum by (by) (increase(metric{...}[window]))`` as {value of ``by``: number}."""
        grouping = f" by ({by})" if by else ""
        series = f"{metric}{self.matching(extra)}[{self.window}]"
        result = self.run(f"sum{grouping} (increase({series}))")
        return {(r["metric"].get(by, "") if by else ""): _number(r) for r in result}

    def total(self, metric: str, extra: str = "") -> float | None:
        return self.increase(metric, extra=extra).get("")

    def quantile(self, q: float, metric: str, extra: str = "") -> float | None:
        series = f"{metric}_bucket{self.matching(extra)}[{self.window}]"
        result = self.run(f"histogram_quantile({q}, sum by (le) (increase({series})))")
        return _number(result[0]) if result else None

    def gauge_max(self, metric: str) -> float | None:
        result = self.run(f"max({metric}{self.matching()})")
        return _number(result[0]) if result else None


def review_from_prometheus(
    url: str, period: Period, selector: str = "", now: dt.datetime | None = None
) -> Review:
    """The review of ``period`` from the Prometheus at ``url``. ``selector`` holds label
    matchers that pick one deployment, such as ``namespace="imgsrv"``."""
    now = now or dt.datetime.now(dt.UTC)
    until = period.until(now)
    review = Review(period, f"Prometheus at {url}", now)
    with httpx.Client(base_url=url.rstrip("/"), timeout=30) as http:
        ask = _Queries(http, selector, until, _window(period.start, until))
        _requests(ask, review)
        _caches(ask, review)
        _jobs(ask, review)
        _egress(ask, review)
        for day in period.days():
            start = dt.datetime.combine(day, dt.time(), dt.UTC)
            if start >= until:
                break
            end = min(start + DAY, until)
            daily = _Queries(http, selector, end, _window(start, end))
            review.egress_by_day.append((day, round(daily.total("imgsrv_egress_bytes_total") or 0)))
    return review


def _requests(ask: _Queries, review: Review) -> None:
    statuses = ask.increase("imgsrv_http_requests_total", by="status")
    review.requests = round(sum(statuses.values()))
    for status, value in statuses.items():
        cls = status[:1] + "xx"
        review.requests_by_status[cls] = review.requests_by_status.get(cls, 0) + round(value)
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        review.latency[name] = ask.quantile(q, "imgsrv_http_request_duration_seconds", IMAGES)


def _caches(ask: _Queries, review: Review) -> None:
    series = f"imgsrv_cache_events_total{ask.matching()}[{ask.window}]"
    events = {
        (r["metric"].get("tier", ""), r["metric"].get("event", "")): _number(r)
        for r in ask.run(f"sum by (tier, event) (increase({series}))")
    }
    for tier in ("l1", "l2", "source"):
        hits, misses = events.get((tier, "hit"), 0.0), events.get((tier, "miss"), 0.0)
        review.hit_ratios[tier] = hits / (hits + misses) if hits + misses else None
    review.image_responses = {
        "l1": round(events.get(("l1", "hit"), 0.0)),
        "l2": round(events.get(("l2", "hit"), 0.0)),
        "miss": round(ask.total("imgsrv_transform_duration_seconds_count") or 0.0),
    }
    review.transform_seconds = ask.total("imgsrv_transform_duration_seconds_sum")
    review.cpu_seconds = ask.total("imgsrv_cpu_seconds_total")


def _jobs(ask: _Queries, review: Review) -> None:
    outcomes = ask.increase("imgsrv_jobs_finished_total", by="outcome")
    review.job_outcomes = {outcome: round(value) for outcome, value in outcomes.items()}
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        review.queue_wait[name] = ask.quantile(q, "imgsrv_job_queue_wait_seconds")


def _egress(ask: _Queries, review: Review) -> None:
    by_format = ask.increase("imgsrv_egress_bytes_total", by="format")
    review.egress_by_format = {k: round(v) for k, v in by_format.items()}
    by_tenant = ask.increase("imgsrv_egress_bytes_total", by="tenant")
    review.egress_by_tenant = {k: round(v) for k, v in by_tenant.items()}
    review.egress_bytes = sum(review.egress_by_format.values())
    review.budget_bytes = round(ask.gauge_max("imgsrv_egress_budget_bytes") or 0)
    review.saver_at_bytes = round(ask.gauge_max("imgsrv_egress_saver_at_bytes") or 0)
    series = f"imgsrv_egress_saver_active{ask.matching()}[{ask.window}]"
    seen = ask.run(f"max(max_over_time({series}))")
    review.saver_seen = bool(seen) and _number(seen[0]) > 0
