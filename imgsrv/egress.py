"""The egress budget: image bytes served per month, counted for every instance in Redis.

Each process adds what it serves to plain integers (:meth:`EgressMeter.served`, a few dict
operations on the response path) and once a second adds them to one Redis hash per calendar
month (UTC) in a single round trip, reading back the month's total. All instances share that
hash, so each knows, within about a second, how much the whole deployment has served.

Once the month's total reaches ``egress_saver_at`` of ``egress_monthly_budget``, saver mode
starts in every process: new renders use the default qualities lowered by
``egress_saver_quality_step`` and ``f:auto`` chooses among ``egress_saver_auto_formats``.
Nothing already rendered changes: cache keys, cached entries and Cache-Control stay as they
are, so a CDN keeps what it holds and only new renders are smaller (a purge re-renders old ones
in saver mode). A new month starts at zero, which ends saver mode.

The month's hash (``{<prefix>:egress}:v1:<YYYY-MM>``, one key per call, so any Redis topology
serves it) holds the month's total and per-day fields that ``imgsrv report`` reads:

``bytes``                  image bytes served this month (the budget's count)
``saver_since``            Unix time at which saver mode first started this month
``dDD:bytes``              bytes served on day DD
``dDD:format:<format>``    bytes of that output format on day DD
``dDD:tenant:<tenant>``    bytes for that tenant on day DD
``dDD:cache:<tier>``       image responses answered from l1, l2 or rendered (miss) on day DD
``dDD:transform_us``       microseconds of transform time of the misses answered on day DD
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from imgsrv import metrics
from imgsrv.config import Settings
from imgsrv.redis_client import REDIS_ERRORS, RedisClient
from imgsrv.transform import TransformOptions

log = logging.getLogger("imgsrv.egress")

ANONYMOUS = "anonymous"
KEY_VERSION = "v1"
FLUSH_INTERVAL = 1.0  # seconds between the additions to Redis
MONTH_TTL = 400 * 86_400  # a month's counters outlive the next year's review of it


def month_of(moment: float) -> str:
    """``YYYY-MM`` of a Unix time, in UTC."""
    return time.strftime("%Y-%m", time.gmtime(moment))


def month_key(prefix: str, month: str) -> str:
    """The Redis hash of one month's counters."""
    return f"{{{prefix}:egress}}:{KEY_VERSION}:{month}"


def day_field(day: int, name: str) -> str:
    """The field of a per-day counter: ``d05:bytes``."""
    return f"d{day:02d}:{name}"


@dataclass
class SaverMode:
    """Which transform options new renders use: the normal ones, or the smaller ones while
    the month's egress is past the saver threshold."""

    normal: TransformOptions
    smaller: TransformOptions
    active: bool = False

    def options(self) -> TransformOptions:
        return self.smaller if self.active else self.normal


def saver_mode(options: TransformOptions, settings: Settings) -> SaverMode:
    """The normal options and their saver-mode variant, built from the settings."""
    step = settings.egress_saver_quality_step
    smaller = dataclasses.replace(
        options,
        jpeg_quality=max(1, options.jpeg_quality - step),
        webp_quality=max(1, options.webp_quality - step),
        avif_quality=max(1, options.avif_quality - step),
        auto_formats=settings.egress_saver_auto_formats,
    )
    return SaverMode(options, smaller)


@dataclass(slots=True)
class _Served:
    """What this process served since its last flush, for one (format, tenant, cache tier)."""

    bytes: int = 0
    responses: int = 0
    transform_us: int = 0


class EgressMeter:
    """Counts the image bytes this process serves and keeps saver mode in step with the
    month's total over all instances."""

    def __init__(
        self,
        settings: Settings,
        redis: RedisClient | None,
        saver: SaverMode,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.saver = saver
        self.prefix = settings.redis_prefix
        self.budget = settings.egress_budget_bytes
        self.saver_at = int(self.budget * settings.egress_saver_at) if self.budget else 0
        self._clock = clock
        self._served: dict[tuple[str, str, str], _Served] = {}
        self._counters: dict[tuple[str, str], Any] = {}
        # Increments that did not reach Redis yet, by month and field; kept across failures.
        self._unsent: dict[str, dict[str, int]] = {}
        self.month = month_of(clock())
        self.month_bytes = 0
        self._redis_down = False
        metrics.EGRESS_BUDGET_BYTES.set(self.budget)
        metrics.EGRESS_SAVER_AT_BYTES.set(self.saver_at)
        metrics.EGRESS_SAVER.set(0)

    # ----------------------------------------------------------------------- response path

    def served(self, size: int, fmt: str, tenant: str, cache: str, transform_ms: float) -> None:
        """Count one image body of ``size`` bytes sent to a client."""
        key = (fmt, tenant, cache)
        served = self._served.get(key)
        if served is None:
            served = self._served[key] = _Served()
        served.bytes += size
        served.responses += 1
        served.transform_us += int(transform_ms * 1000)
        counter = self._counters.get(key[:2])
        if counter is None:
            counter = self._counters[key[:2]] = metrics.EGRESS_BYTES.labels(fmt, tenant)
        metrics.BATCHED.add(counter, size)

    # ----------------------------------------------------------------------- flushing

    async def run(self, interval: float = FLUSH_INTERVAL) -> None:
        """Flush now and then every ``interval`` seconds, until cancelled."""
        while True:
            try:
                await self.flush()
            except Exception:  # never lose the loop over one bad flush
                log.exception("egress flush failed")
            await asyncio.sleep(interval)

    async def flush(self) -> None:
        """Add what was served to this month's counters and follow the month's total."""
        now = self._clock()
        month = month_of(now)
        if month != self.month:
            # A new month starts at zero, whatever Redis can tell us right now.
            self.month, self.month_bytes = month, 0
            self._follow_budget(off_reason="a new month began")
        served, self._served = self._served, {}
        unsent = self._unsent.setdefault(month, {})
        for field, amount in _fields(served, time.gmtime(now).tm_mday):
            unsent[field] = unsent.get(field, 0) + amount
        if self.redis is None:
            self.month_bytes += unsent.pop("bytes", 0)
            self._unsent.clear()
        else:
            try:
                await self._send()
            except REDIS_ERRORS as exc:
                if not self._redis_down:
                    log.warning("egress counters not written to Redis", extra={"error": repr(exc)})
                self._redis_down = True
                return
            if self._redis_down:
                log.info("egress counters written to Redis again")
            self._redis_down = False
        metrics.EGRESS_MONTH_BYTES.set(self.month_bytes)
        self._follow_budget(off_reason="the month's count is below the saver threshold")

    async def _send(self) -> None:
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        for month, fields in self._unsent.items():
            key = month_key(self.prefix, month)
            for field, amount in fields.items():
                pipe.hincrby(key, field, amount)
            if fields:
                pipe.expire(key, MONTH_TTL)
        current = month_key(self.prefix, self.month)
        pipe.hget(current, "bytes")
        replies = await pipe.execute()
        self._unsent.clear()
        self.month_bytes = int(replies[-1] or 0)
        if self.saver.active is False and self.saver_at and self.month_bytes >= self.saver_at:
            # The first instance to switch records when; the others leave it.
            await self.redis.hsetnx(current, "saver_since", int(self._clock()))

    def _follow_budget(self, off_reason: str) -> None:
        """Switch saver mode on or off to match the month's count, with one log line."""
        active = bool(self.saver_at) and self.month_bytes >= self.saver_at
        if active == self.saver.active:
            return
        self.saver.active = active
        metrics.EGRESS_SAVER.set(1 if active else 0)
        fields = {
            "event": "saver_on" if active else "saver_off",
            "reason": "the month's egress reached the saver threshold" if active else off_reason,
            "month": self.month,
            "egress_bytes": self.month_bytes,
            "budget_bytes": self.budget,
            "saver_at_bytes": self.saver_at,
            "pid": os.getpid(),
        }
        # A warning, so that the line is written at once rather than with the next batch.
        if active:
            log.warning("egress saver mode on", extra=fields)
        else:
            log.info("egress saver mode off", extra=fields)


def _fields(served: dict[tuple[str, str, str], _Served], day: int) -> Iterable[tuple[str, int]]:
    """The hash increments for what was served on ``day``."""
    for (fmt, tenant, cache), counts in served.items():
        yield "bytes", counts.bytes
        yield day_field(day, "bytes"), counts.bytes
        yield day_field(day, "format:" + fmt), counts.bytes
        yield day_field(day, "tenant:" + tenant), counts.bytes
        yield day_field(day, "cache:" + cache), counts.responses
        if counts.transform_us:
            yield day_field(day, "transform_us"), counts.transform_us
