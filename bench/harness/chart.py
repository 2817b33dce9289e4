"""The results chart: per scenario, req/s, server CPU per response and p99 per contender.

Scenarios are laid out :data:`COLUMNS` to a row of panels, each with three charts stacked.

``python bench/harness/chart.py RESULTS.json OUT.png``. Needs only matplotlib and the
standard library, so the runner can start it with the tools virtualenv's Python when
imgsrv's own environment has no matplotlib.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLOURS = {
    "imgsrv": "#1f77b4",
    "imgsrv_wrk": "#4a98c9",
    "imgsrv_c16": "#9ecae1",
    "imgsrv_a": "#1f77b4",
    "imgsrv_b": "#4a98c9",
    "imgsrv_b_idle": "#9ecae1",
    "ceiling": "#2ca02c",
    "pipeline": "#98df8a",
    "bare": "#9467bd",
    "thumbor": "#ff7f0e",
    "loadgen": "#bbbbbb",
}
ORDER = list(COLOURS)


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


COLUMNS = 6
METRICS = (("rps", "req/s"), ("cpu_ms_per_ok", "CPU ms / response"), ("p99_ms", "p99 ms"))


def draw(document: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = {
        name: s for name, s in document["scenarios"].items() if s.get("contenders")
    }
    count = max(1, len(scenarios))
    columns = min(COLUMNS, count)
    blocks = -(-count // columns)
    rows = blocks * len(METRICS)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for index, (name, scenario) in enumerate(scenarios.items()):
        block, column = divmod(index, columns)
        contenders = sorted(
            scenario["contenders"], key=lambda c: ORDER.index(c) if c in ORDER else 99
        )
        colours = [COLOURS.get(c, "#777777") for c in contenders]
        for offset, (key, title) in enumerate(METRICS):
            ax = axes[block * len(METRICS) + offset][column]
            ax.set_visible(True)
            values = [scenario["contenders"][c][key] for c in contenders]
            bars = ax.bar(range(len(values)), values, color=colours)
            labels = contenders if offset == len(METRICS) - 1 else [""] * len(contenders)
            ax.set_xticks(range(len(values)), labels, rotation=35, ha="right", fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            ax.set_ylim(0, max([*values, 1e-9]) * 1.22)
            for bar, value in zip(bars, values, strict=True):
                ax.annotate(
                    _label(value),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=6, xytext=(0, 1),
                    textcoords="offset points",
                )  # fmt: skip
            if offset == 0:
                ax.set_title(f"{name} (c={scenario['concurrency']})", fontsize=9)
            if column == 0:
                ax.set_ylabel(title, fontsize=8)
    versions = document.get("versions", {})
    fig.suptitle(
        "imgsrv benchmark: req/s (higher is better), server CPU per successful response and "
        "p99 latency (lower is better; for ceiling and pipeline: per transform, no queue)\n"
        f"{versions.get('machine', '')}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: chart.py RESULTS.json OUT.png")
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
