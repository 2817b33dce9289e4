"""A review from the monthly counters in Redis (see :mod:`imgsrv.egress` for their fields)."""

from __future__ import annotations

import datetime as dt

from redis import Redis, RedisCluster

from imgsrv.egress import day_field, month_key
from imgsrv.report.period import Period
from imgsrv.report.review import Review


def review_from_redis(
    redis: Redis | RedisCluster,
    prefix: str,
    period: Period,
    budget_bytes: int = 0,
    saver_at_bytes: int = 0,
    now: dt.datetime | None = None,
) -> Review:
    """The review of ``period`` from the counters under ``prefix``. The budget is the one
    configured now: the counters do not record it."""
    now = now or dt.datetime.now(dt.UTC)
    review = Review(period, "the monthly counters in Redis", now)
    review.budget_bytes, review.saver_at_bytes = budget_bytes, saver_at_bytes
    months = {month: _text_hash(redis, month_key(prefix, month)) for month in period.months()}
    transform_us = 0
    for day in period.days():
        if day > now.date():
            break
        fields = months[day.strftime("%Y-%m")]
        served = int(fields.get(day_field(day.day, "bytes"), 0))
        review.egress_by_day.append((day, served))
        review.egress_bytes += served
        transform_us += int(fields.get(day_field(day.day, "transform_us"), 0))
        prefix_of_day = day_field(day.day, "")
        for name, value in fields.items():
            if not name.startswith(prefix_of_day):
                continue
            kind, _, label = name[len(prefix_of_day) :].partition(":")
            table = {
                "format": review.egress_by_format,
                "tenant": review.egress_by_tenant,
                "cache": review.image_responses,
            }.get(kind)
            if table is not None:
                table[label] = table.get(label, 0) + int(value)
    review.transform_seconds = transform_us / 1e6
    tiers = review.image_responses
    served_images = sum(tiers.values())
    if served_images:
        review.hit_ratios["l1"] = tiers.get("l1", 0) / served_images
        past_l1 = tiers.get("l2", 0) + tiers.get("miss", 0)
        review.hit_ratios["l2"] = tiers.get("l2", 0) / past_l1 if past_l1 else None
    for month in period.months():
        since = months[month].get("saver_since")
        if since and review.saver_since is None:
            review.saver_since = dt.datetime.fromtimestamp(int(since), dt.UTC)
    return review


def _text_hash(redis: Redis | RedisCluster, key: str) -> dict[str, str]:
    raw: dict[bytes | str, bytes | str] = redis.hgetall(key)
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
