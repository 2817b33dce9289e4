"""``imgsrv report``: periods, and the review's Markdown and chart from known figures."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import pyvips

from imgsrv import cli
from imgsrv.report.chart import draw_chart
from imgsrv.report.period import month_period, range_period
from imgsrv.report.review import Review, to_markdown

UTC = dt.UTC


def test_a_month_runs_from_its_first_day_to_the_next_months() -> None:
    period = month_period("2026-12")
    assert period.start == dt.datetime(2026, 12, 1, tzinfo=UTC)
    assert period.end == dt.datetime(2027, 1, 1, tzinfo=UTC)
    assert period.title == "2026-12" and len(list(period.days())) == 31
    assert month_period("2028-02").months() == ["2028-02"]
    assert len(list(month_period("2028-02").days())) == 29


def test_a_range_includes_both_days_and_may_span_months() -> None:
    period = range_period("2026-11-25", "2026-12-02")
    assert period.title == "2026-11-25 to 2026-12-02"
    assert period.months() == ["2026-11", "2026-12"] and len(list(period.days())) == 8


@pytest.mark.parametrize(
    "args",
    [("2026-13", None, None), (None, "2026-11-05", "2026-11-01"), ("2026-11", "2026-11-01", None)],
)
def test_bad_periods_are_refused(args: tuple[str | None, str | None, str | None]) -> None:
    with pytest.raises(ValueError):
        cli.report_period(*args)


def test_the_cli_refuses_a_bad_month_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "--month", "November"]) == 2
    assert "2026-11" in capsys.readouterr().err


def review() -> Review:
    period = month_period("2026-11")
    figures = Review(period, "test figures", dt.datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    figures.requests = 1_234_567
    figures.requests_by_status = {"2xx": 1_200_000, "4xx": 34_000, "5xx": 567}
    figures.image_responses = {"l1": 900_000, "l2": 200_000, "miss": 100_000}
    figures.hit_ratios = {"l1": 0.75, "l2": 2 / 3, "source": None}
    figures.transform_seconds = 7200.0
    figures.latency = {"p50": 0.004, "p95": 0.25, "p99": 1.5}
    figures.job_outcomes = {"succeeded": 40, "failed": 2}
    figures.queue_wait = {"p50": 0.3, "p95": 4.0}
    figures.egress_by_day = [(day, 12_000_000_000) for day in period.days()]
    figures.egress_bytes = 360_000_000_000
    figures.egress_by_format = {"webp": 300_000_000_000, "avif": 60_000_000_000}
    figures.egress_by_tenant = {"shop": 360_000_000_000}
    figures.budget_bytes, figures.saver_at_bytes = 500_000_000_000, 300_000_000_000
    figures.saver_since = dt.datetime(2026, 11, 26, 3, 4, tzinfo=UTC)
    return figures


def test_the_markdown_says_each_figure() -> None:
    text = to_markdown(review(), "chart.png")
    assert text.startswith("# imgsrv review: 2026-11\n")
    for line in (
        "| Requests answered | 1,234,567 |",
        "| By status | 2xx: 1,200,000 / 3xx: 0 / 4xx: 34,000 / 5xx: 567 |",
        "| Image latency p50 / p95 / p99 | 4 ms / 250 ms / 1.50 s |",
        "| L1 (memory) hit ratio | 75.0% |",
        "| L2 (Redis) hit ratio, of L1 misses | 66.7% |",
        "| Recent-source hit ratio, of downloads | - |",
        "| Miss CPU time (transforms) | 2.0 h |",
        "| succeeded | 40 |",
        "| Queue wait p50 / p95 | 300 ms / 4.00 s |",
        "| Image bytes served | 360.0 GB |",
        "| Monthly budget | 500.0 GB (72.0% used) |",
        "| Saver mode (from 300.0 GB) | on since 2026-11-26 03:04 UTC |",
        "| webp | 300.0 GB (83.3%) |",
        "![Egress per day and in total against the budget](chart.png)",
    ):
        assert line in text, line


def test_without_prometheus_the_job_rows_say_so() -> None:
    figures = review()
    figures.job_outcomes, figures.latency, figures.requests = None, {}, None
    text = to_markdown(figures)
    assert "Job outcomes and queue waits: n/a (needs --prometheus)." in text
    assert "| Image latency p50 / p95 / p99 | n/a (needs --prometheus) |" in text


def test_the_chart_is_a_png_of_both_panels(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    draw_chart(review(), path)
    image = pyvips.Image.new_from_file(str(path))
    assert (image.width, image.height, image.bands) == (960, 560, 3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The bars are drawn: the day panel holds the bar colour.
    bars = image.crop(90, 40, 830, 220)
    assert (bars == [31, 119, 180]).bandand().max() == 255
