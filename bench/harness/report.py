"""The results document, its markdown table and the target ratios.

The JSON shape (``bench/README.md`` documents it; ``tests/test_bench_smoke.py`` checks it)::

    {"versions": {...}, "commands": {...},
     "scenarios": {"<scenario>": {"concurrency": 32, "duration_s": 30,
                                  "contenders": {"<name>": {"rps": 0.0, "p50_ms": 0.0,
                                                            "p95_ms": 0.0, "p99_ms": 0.0,
                                                            "errors": 0, "peak_rss_mb": 0.0,
                                                            "extra": {...}}}}}}

A scenario that could not run has ``"skipped": "<reason>"`` and no contenders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCENARIOS = ("miss", "miss_webp", "hit", "mixed", "overload", "jobs")
METRIC_KEYS = ("rps", "p50_ms", "p95_ms", "p99_ms", "errors", "peak_rss_mb")
SCENARIO_KEYS = ("concurrency", "duration_s", "contenders")
CONTENDER_ORDER = ("imgsrv", "ceiling", "pipeline", "bare", "thumbor", "loadgen")


def shape_problems(document: Mapping[str, Any]) -> list[str]:
    """Everything about ``document`` that does not follow the results shape ([] if fine)."""
    problems: list[str] = []
    for key in ("versions", "commands", "scenarios"):
        if not isinstance(document.get(key), dict):
            problems.append(f"top level: {key!r} missing or not an object")
    for name, scenario in (document.get("scenarios") or {}).items():
        if not isinstance(scenario, dict):
            problems.append(f"{name}: not an object")
            continue
        for key in SCENARIO_KEYS:
            if key not in scenario:
                problems.append(f"{name}: {key!r} missing")
        contenders = scenario.get("contenders") or {}
        if not contenders and not scenario.get("skipped"):
            problems.append(f"{name}: no contenders and no 'skipped' reason")
        for contender, metrics in contenders.items():
            for key in METRIC_KEYS:
                value = metrics.get(key)
                if not isinstance(value, int | float) or isinstance(value, bool):
                    problems.append(f"{name}.{contender}: {key!r} missing or not a number")
    return problems


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One target of the specification, evaluated on a results document."""

    name: str
    measured: str
    goal: str
    met: bool | None  # None: not measured in this run


def _get(document: Mapping[str, Any], scenario: str, contender: str) -> Mapping[str, Any] | None:
    entry = document.get("scenarios", {}).get(scenario, {}).get("contenders", {}).get(contender)
    return entry if isinstance(entry, Mapping) else None


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _ratio_target(
    name: str, a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, key: str, goal: float,
    at_least: bool = True, key_b: str | None = None,
) -> Target:  # fmt: skip
    sign = ">=" if at_least else "<="
    if a is None or b is None:
        return Target(name, "not measured", f"{sign} {goal:g}", None)
    ratio = _ratio(float(a[key]), float(b[key_b or key]))
    if ratio is None:
        return Target(name, "undefined (zero denominator)", f"{sign} {goal:g}", False)
    met = ratio >= goal if at_least else ratio <= goal
    detail = f"{ratio:.2f}x ({float(a[key]):g} / {float(b[key_b or key]):g})"
    return Target(name, detail, f"{sign} {goal:g}", met)


def targets(document: Mapping[str, Any]) -> list[Target]:
    """Every ratio target, measured on ``document``."""
    miss = _get(document, "miss", "imgsrv")
    webp = _get(document, "miss_webp", "imgsrv")
    hit = _get(document, "hit", "imgsrv")
    result = [
        _ratio_target("miss JPEG: imgsrv / ceiling rps", miss, _get(document, "miss", "ceiling"),
                      "rps", 0.9),
        _ratio_target("miss WebP: imgsrv / ceiling rps", webp,
                      _get(document, "miss_webp", "ceiling"), "rps", 0.9),
        _ratio_target("miss JPEG: imgsrv / thumbor rps", miss, _get(document, "miss", "thumbor"),
                      "rps", 1.9),
        _ratio_target("miss JPEG: imgsrv p99 / p50", miss, miss, "p99_ms", 1.3, False, "p50_ms"),
        _ratio_target("miss WebP: imgsrv p99 / p50", webp, webp, "p99_ms", 1.3, False, "p50_ms"),
        _ratio_target("hit: imgsrv / bare rps", hit, _get(document, "hit", "bare"), "rps", 0.8),
        _ratio_target("hit: imgsrv / thumbor (result storage) rps", hit,
                      _get(document, "hit", "thumbor"), "rps", 6.0),
        _ratio_target("hit: imgsrv p99 / bare p99", hit, _get(document, "hit", "bare"), "p99_ms",
                      2.0, False),
    ]  # fmt: skip
    result += _overload_targets(document, miss)
    result += _memory_targets(miss)
    result += _loadgen_targets(document)
    return result


def _overload_targets(document: Mapping[str, Any], miss: Mapping[str, Any] | None) -> list[Target]:
    over = _get(document, "overload", "imgsrv")
    if over is None:
        return [Target("overload", "not measured", "", None)]
    extra = over.get("extra", {})
    timeouts = int(extra.get("timeouts", 0))
    shed = int(extra.get("shed", 0))
    shed_p99 = float(extra.get("shed_p99_ms", 0.0))
    missing = int(extra.get("shed_without_retry_after", 0))
    return [
        Target("overload: timeouts", str(timeouts), "0", timeouts == 0),
        Target("overload: errors other than 503", str(over["errors"]), "0", over["errors"] == 0),
        Target(
            "overload: 503 answered in (p99)",
            f"{shed_p99:.1f} ms over {shed} sheds" if shed else "no request was shed",
            "< 50 ms",
            shed_p99 < 50 if shed else None,
        ),
        Target("overload: 503 without Retry-After", str(missing), "0",
               missing == 0 if shed else None),
        _ratio_target("overload: accepted p99 (c=256) / miss p99 (c=32)", over, miss, "p99_ms",
                      3.0, False),
        *_loadgen_floor(document),
    ]  # fmt: skip


def _loadgen_floor(document: Mapping[str, Any]) -> list[Target]:
    """The load generator's own latency at c=256: every timing of the scenario includes it."""
    probe = _get(document, "overload", "loadgen")
    if probe is None:
        return []
    return [
        Target("overload: load generator p99 at c=256 against nginx (its own floor)",
               f"{probe['p99_ms']:.1f} ms (p50 {probe['p50_ms']:.1f} ms)", "reference", None)
    ]  # fmt: skip


def _memory_targets(miss: Mapping[str, Any] | None) -> list[Target]:
    if miss is None:
        return [Target("memory", "not measured", "", None)]
    extra = miss.get("extra", {})
    l1 = float(extra.get("l1_mb_after_load", 0.0))
    limit = 2 * (150 + l1)
    peak = float(miss["peak_rss_mb"])
    idle = float(extra.get("rss_idle_mb", 0.0))
    after = float(extra.get("rss_after_load_mb", 0.0))
    # "Near its idle level": within the L1 contents plus 25% of the idle size.
    near = idle + l1 + 0.25 * idle
    return [
        Target("memory: peak RSS of the server tree during miss c=32",
               f"{peak:.0f} MiB (L1 holds {l1:.0f} MiB)", f"<= {limit:.0f} MiB = 2 x (150 + L1)",
               peak <= limit),
        Target("memory: RSS after the load stops",
               f"{after:.0f} MiB (idle before: {idle:.0f} MiB)",
               f"<= {near:.0f} MiB = idle + L1 + 25% of idle", after <= near if after else None),
    ]  # fmt: skip


def _loadgen_targets(document: Mapping[str, Any]) -> list[Target]:
    found = []
    for scenario in ("hit", "mixed"):
        contenders = document.get("scenarios", {}).get(scenario, {}).get("contenders", {})
        probe = contenders.get("loadgen")
        others = [v["rps"] for k, v in contenders.items() if k != "loadgen"]
        if probe is None or not others:
            continue
        fastest = max(others)
        ratio = probe["rps"] / fastest if fastest else 0.0
        found.append(
            Target(f"{scenario}: load generator capacity / fastest contender",
                   f"{ratio:.2f}x ({probe['rps']:g} / {fastest:g})", ">= 2", ratio >= 2)
        )  # fmt: skip
    return found or [Target("load generator capacity", "not measured", ">= 2", None)]


# --------------------------------------------------------------------------- markdown


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _note(scenario: str, contender: str, extra: Mapping[str, Any]) -> str:
    notes = []
    if "shed" in extra:
        notes.append(f"{extra['shed']} shed (503), p99 {extra['shed_p99_ms']:.1f} ms")
    if extra.get("timeouts"):
        notes.append(f"{extra['timeouts']} timeouts")
    if "rss_after_load_mb" in extra:
        notes.append(
            f"RSS idle {extra['rss_idle_mb']:.0f} / after {extra['rss_after_load_mb']:.0f} MiB, "
            f"L1 {extra.get('l1_mb_after_load', 0):.0f} MiB"
        )
    if extra.get("server_cpu_pct"):
        notes.append(f"CPU server {extra['server_cpu_pct']:.0f}%")
    if extra.get("loadgen_cpu_pct"):
        notes.append(f"load gen {extra['loadgen_cpu_pct']:.0f}%")
    if extra.get("other_cpu_pct", 0) >= 5:
        notes.append(f"other {extra['other_cpu_pct']:.0f}%")
    if "statuses" in extra:
        notes.append("statuses " + ", ".join(f"{k}: {v}" for k, v in extra["statuses"].items()))
    if len(extra.get("rounds_rps", [])) > 1:
        notes.append("rounds " + "/".join(f"{v:g}" for v in extra["rounds_rps"]))
    if "other_requests" in extra:
        notes.append("also " + ", ".join(f"{k}: {v}" for k, v in extra["other_requests"].items()))
    return "; ".join(notes)


def markdown(document: Mapping[str, Any]) -> str:
    """The results table, the targets table and the versions, as markdown."""
    lines = [
        "| scenario | c | contender | req/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MiB "
        "| notes |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, scenario in document.get("scenarios", {}).items():
        if scenario.get("skipped"):
            lines.append(f"| {name} | {scenario['concurrency']} | — | skipped: "
                         f"{scenario['skipped']} | | | | | | |")  # fmt: skip
            continue
        contenders = scenario["contenders"]
        ordered = sorted(contenders, key=lambda c: (_order(c), c))
        for contender in ordered:
            m = contenders[contender]
            note = _note(name, contender, m.get("extra", {}))
            lines.append(
                f"| {name} | {scenario['concurrency']} | {contender} | {_fmt(m['rps'])} | "
                f"{_fmt(m['p50_ms'])} | {_fmt(m['p95_ms'])} | {_fmt(m['p99_ms'])} | "
                f"{m['errors']} | {m['peak_rss_mb']:.0f} | {note} |"
            )
    lines += ["", "| target | measured | goal | met |", "| --- | --- | --- | --- |"]
    for target in targets(document):
        met = {True: "yes", False: "**no**", None: "—"}[target.met]
        lines.append(f"| {target.name} | {target.measured} | {target.goal} | {met} |")
    lines += ["", "<details><summary>versions</summary>", ""]
    lines += [f"* {k}: {v}" for k, v in document.get("versions", {}).items()]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _order(contender: str) -> int:
    return CONTENDER_ORDER.index(contender) if contender in CONTENDER_ORDER else 99
