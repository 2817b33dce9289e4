"""The figures of a review and their Markdown."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from imgsrv.report.period import Period

NEEDS_PROMETHEUS = "n/a (needs --prometheus)"


@dataclass
class Review:
    """What ``imgsrv report`` prints. None = not known from the source used."""

    period: Period
    source: str
    generated: dt.datetime
    requests: int | None = None  # every HTTP request answered
    requests_by_status: dict[str, int] = field(default_factory=dict)  # "2xx" .. "5xx"
    image_responses: dict[str, int] = field(default_factory=dict)  # by tier: l1, l2, miss
    hit_ratios: dict[str, float | None] = field(default_factory=dict)  # l1, l2, source
    transform_seconds: float | None = None  # time the misses spent transforming
    cpu_seconds: float | None = None  # CPU time of every serving process
    latency: dict[str, float | None] = field(default_factory=dict)  # p50, p95, p99
    queue_wait: dict[str, float | None] = field(default_factory=dict)  # p50, p95
    job_outcomes: dict[str, int] | None = None
    egress_bytes: int = 0
    egress_by_format: dict[str, int] = field(default_factory=dict)
    egress_by_tenant: dict[str, int] = field(default_factory=dict)
    egress_by_day: list[tuple[dt.date, int]] = field(default_factory=list)
    budget_bytes: int = 0
    saver_at_bytes: int = 0
    saver_since: dt.datetime | None = None  # when saver mode first started (Redis)
    saver_seen: bool = False  # saver mode was on at some time of the period


def size(count: float) -> str:
    """Bytes in decimal units, as bandwidth is billed: ``312.4 GB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def seconds(value: float | None) -> str:
    if value is None or value != value:  # None or NaN: nothing observed
        return "-"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.0f} ms"


def percent(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value * 100:.1f}%"


def count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return [*lines, ""]


def _shares(values: Mapping[str, int], total: int) -> list[tuple[str, str]]:
    ordered = sorted(values.items(), key=lambda item: -item[1])
    return [(name, f"{size(v)} ({percent(v / total if total else None)})") for name, v in ordered]


def to_markdown(review: Review, chart: str | None = None) -> str:
    """The review as a Markdown document; ``chart`` is the PNG's file name, if drawn."""
    p = review.period
    last = (p.end - dt.timedelta(days=1)).date()
    lines = [
        f"# imgsrv review: {p.title}",
        "",
        f"{p.start.date().isoformat()} to {last.isoformat()} (UTC), from {review.source}; "
        f"written {review.generated.strftime('%Y-%m-%d %H:%M')} UTC.",
        "",
        "## Requests",
        "",
    ]
    by_status = " / ".join(
        f"{cls}: {count(review.requests_by_status.get(cls, 0))}"
        for cls in ("2xx", "3xx", "4xx", "5xx")
    )
    tiers = review.image_responses
    rows = [
        ("Requests answered", count(review.requests) if review.requests is not None else "-"),
        ("By status", by_status if review.requests_by_status else "-"),
        ("Images served", count(sum(tiers.values())) if tiers else "-"),
        (
            "Image latency p50 / p95 / p99",
            " / ".join(seconds(review.latency.get(q)) for q in ("p50", "p95", "p99"))
            if review.latency
            else NEEDS_PROMETHEUS,
        ),
    ]
    lines += _table(("", ""), rows)
    lines += ["## Caches", ""]
    rows = [
        ("L1 (memory) hit ratio", percent(review.hit_ratios.get("l1"))),
        ("L2 (Redis) hit ratio, of L1 misses", percent(review.hit_ratios.get("l2"))),
        ("Recent-source hit ratio, of downloads", percent(review.hit_ratios.get("source"))),
        ("Miss CPU time (transforms)", seconds(review.transform_seconds)),
        ("CPU time of the servers", seconds(review.cpu_seconds)),
    ]
    lines += _table(("", ""), rows)
    lines += ["## Jobs", ""]
    if review.job_outcomes is None:
        lines += [f"Job outcomes and queue waits: {NEEDS_PROMETHEUS}.", ""]
    else:
        outcomes = review.job_outcomes
        rows = [(o, count(outcomes.get(o, 0))) for o in ("succeeded", "failed", "cancelled")]
        rows.append(
            (
                "Queue wait p50 / p95",
                " / ".join(seconds(review.queue_wait.get(q)) for q in ("p50", "p95")),
            )
        )
        lines += _table(("Outcome", "Jobs"), rows)
    lines += ["## Egress", ""]
    rows = [("Image bytes served", size(review.egress_bytes))]
    if review.budget_bytes:
        used = review.egress_bytes / review.budget_bytes
        rows.append(("Monthly budget", f"{size(review.budget_bytes)} ({percent(used)} used)"))
        since = review.saver_since
        if since is not None:
            saver = f"on since {since.strftime('%Y-%m-%d %H:%M')} UTC"
        else:
            saver = "on during the period" if review.saver_seen else "not reached"
        rows.append((f"Saver mode (from {size(review.saver_at_bytes)})", saver))
    else:
        rows.append(("Monthly budget", "none set"))
    lines += _table(("", ""), rows)
    if review.egress_by_format:
        lines += _table(("Format", "Bytes"), _shares(review.egress_by_format, review.egress_bytes))
    if review.egress_by_tenant:
        lines += _table(("Tenant", "Bytes"), _shares(review.egress_by_tenant, review.egress_bytes))
    if chart:
        lines += [f"![Egress per day and in total against the budget]({chart})", ""]
    return "\n".join(lines)
