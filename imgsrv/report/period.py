"""The period a review covers: a calendar month or a range of days, in UTC."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

UTC = dt.UTC


@dataclass(frozen=True, slots=True)
class Period:
    """``start`` (included) to ``end`` (excluded), both at midnight UTC."""

    start: dt.datetime
    end: dt.datetime

    @property
    def title(self) -> str:
        last = (self.end - dt.timedelta(days=1)).date()
        first = self.start.date()
        if first.day == 1 and (self.end.date().day == 1) and _next_month(first) == self.end.date():
            return first.strftime("%Y-%m")
        return f"{first.isoformat()} to {last.isoformat()}"

    def days(self) -> Iterator[dt.date]:
        day = self.start.date()
        while day < self.end.date():
            yield day
            day += dt.timedelta(days=1)

    def months(self) -> list[str]:
        """``YYYY-MM`` of every month the period touches."""
        return sorted({day.strftime("%Y-%m") for day in self.days()})

    def until(self, now: dt.datetime) -> dt.datetime:
        """The period's end, or ``now`` if the period is not over."""
        return min(self.end, now)


def _next_month(day: dt.date) -> dt.date:
    return (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)


def month_period(month: str) -> Period:
    """``2026-11`` -> 1 November 2026 to 1 December 2026."""
    try:
        first = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{month!r} is not a month such as 2026-11") from None
    end = dt.datetime.combine(_next_month(first.date()), dt.time(), UTC)
    return Period(first, end)


def range_period(first: str, last: str) -> Period:
    """``2026-11-01``, ``2026-11-15`` -> both days included."""
    try:
        start = dt.datetime.strptime(first, "%Y-%m-%d").replace(tzinfo=UTC)
        stop = dt.datetime.strptime(last, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError("dates are written as 2026-11-01") from None
    if stop < start:
        raise ValueError(f"{last} is before {first}")
    return Period(start, stop + dt.timedelta(days=1))
