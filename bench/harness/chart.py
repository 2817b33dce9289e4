"""The results chart: throughput and p99 latency per contender, one column per scenario.

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
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def draw(document: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = {
        name: s for name, s in document["scenarios"].items() if s.get("contenders")
    }
    count = max(1, len(scenarios))
    fig, axes = plt.subplots(2, count, figsize=(3.1 * count, 6.4), squeeze=False)
    for column, (name, scenario) in enumerate(scenarios.items()):
        contenders = sorted(
            scenario["contenders"], key=lambda c: ORDER.index(c) if c in ORDER else 99
        )
        colours = [COLOURS.get(c, "#777777") for c in contenders]
        for row, (key, title) in enumerate((("rps", "req/s"), ("p99_ms", "p99 ms"))):
            ax = axes[row][column]
            values = [scenario["contenders"][c][key] for c in contenders]
            bars = ax.bar(range(len(values)), values, color=colours)
            ax.set_xticks(range(len(values)), contenders, rotation=35, ha="right", fontsize=8)
            ax.tick_params(axis="y", labelsize=8)
            ax.set_ylim(0, max([*values, 1e-9]) * 1.18)
            for bar, value in zip(bars, values, strict=True):
                ax.annotate(
                    _label(value),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 1),
                    textcoords="offset points",
                )  # fmt: skip
            if row == 0:
                ax.set_title(f"{name} (c={scenario['concurrency']})", fontsize=10)
            if column == 0:
                ax.set_ylabel(title)
    versions = document.get("versions", {})
    fig.suptitle(
        "imgsrv benchmark: throughput (top, higher is better) and p99 latency (bottom, lower "
        "is better; for ceiling and pipeline: time per transform, no queue)\n"
        f"{versions.get('machine', '')}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: chart.py RESULTS.json OUT.png")
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
