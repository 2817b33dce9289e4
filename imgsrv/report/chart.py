"""The review's chart, drawn with libvips: egress per day, and the total against the budget.

Two panels on one PNG: bars of the bytes served each day, and below them the running total
with the saver threshold, the alert levels (80, 90, 96%) and the budget as lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyvips

from imgsrv.report.review import Review, size

WIDTH, PANEL, MARGIN_LEFT, MARGIN = 960, 220, 90, 40
BACKGROUND = [255, 255, 255]
AXIS = [90, 90, 90]
BARS = [31, 119, 180]
TOTAL = [20, 20, 20]
LEVELS = (
    ("saver", [44, 160, 44]),
    ("80%", [255, 190, 0]),
    ("90%", [255, 127, 14]),
    ("96%", [214, 39, 40]),
    ("budget", [120, 0, 0]),
)


def _text(image: Any, text: str, x: int, y: int, colour: list[int], font: str = "sans 9") -> Any:
    mask = pyvips.Image.text(text, dpi=96, font=font)
    ink = mask.new_from_image(colour).copy(interpretation="srgb").bandjoin(mask)
    return image.composite2(ink, "over", x=x, y=y).extract_band(0, n=3)


def _thick_line(image: Any, colour: list[int], x1: int, y1: int, x2: int, y2: int) -> Any:
    for offset in (0, 1):
        image = image.draw_line(colour, x1, y1 + offset, x2, y2 + offset)
    return image


def draw_chart(review: Review, path: Path) -> None:
    """Write the chart of ``review`` to ``path`` as PNG."""
    height = 2 * PANEL + 3 * MARGIN
    image = pyvips.Image.black(WIDTH, height, bands=3).new_from_image(BACKGROUND)
    image = image.copy(interpretation="srgb")
    days = review.egress_by_day or [(review.period.start.date(), 0)]
    plot_width = WIDTH - MARGIN_LEFT - MARGIN
    step = plot_width / len(days)
    title = f"imgsrv egress, {review.period.title}: {size(review.egress_bytes)}"
    image = _text(image, title, MARGIN_LEFT, 8, TOTAL, "sans bold 11")

    # Bytes per day.
    top = MARGIN
    peak = max(served for _, served in days) or 1
    image = _axes(image, top, f"per day (max {size(peak)})")
    for index, (_, served) in enumerate(days):
        bar = round(served / peak * (PANEL - 10))
        x = MARGIN_LEFT + round(index * step) + 1
        if bar:
            width = max(1, round(step) - 2)
            image = image.draw_rect(BARS, x, top + PANEL - bar, width, bar, fill=True)

    # Running total against the budget and its levels.
    top = 2 * MARGIN + PANEL
    totals, running = [], 0
    for _, served in days:
        running += served
        totals.append(running)
    budget = review.budget_bytes
    ceiling = max([budget, *totals, 1]) * 1.05
    image = _axes(image, top, f"running total (top {size(ceiling)})")

    def y_of(value: float) -> int:
        return top + PANEL - round(value / ceiling * PANEL)

    if budget:
        levels = (review.saver_at_bytes, 0.8 * budget, 0.9 * budget, 0.96 * budget, budget)
        label_x, last_y = WIDTH - MARGIN - 120, -100
        for (label, colour), level in zip(LEVELS, levels, strict=True):
            if level:
                y = y_of(level)
                image = image.draw_line(colour, MARGIN_LEFT, y, WIDTH - MARGIN, y)
                # Levels close together get their labels side by side, not on top.
                label_x = label_x - 130 if abs(last_y - y) < 14 else WIDTH - MARGIN - 120
                image = _text(image, f"{label} {size(level)}", label_x, y - 14, colour)
                last_y = y
    points = [(MARGIN_LEFT + round((i + 1) * step), y_of(t)) for i, t in enumerate(totals)]
    previous = (MARGIN_LEFT, y_of(0))
    for point in points:
        image = _thick_line(image, TOTAL, *previous, *point)
        previous = point
    first, last = days[0][0], days[-1][0]
    image = _text(image, first.isoformat(), MARGIN_LEFT, top + PANEL + 4, AXIS)
    image = _text(image, last.isoformat(), WIDTH - MARGIN - 70, top + PANEL + 4, AXIS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.pngsave(str(path))


def _axes(image: Any, top: int, label: str) -> Any:
    image = image.draw_line(AXIS, MARGIN_LEFT, top, MARGIN_LEFT, top + PANEL)
    image = image.draw_line(AXIS, MARGIN_LEFT, top + PANEL, WIDTH - MARGIN, top + PANEL)
    return _text(image, label, MARGIN_LEFT + 6, top + 2, AXIS)
