"""The results document, its markdown table and the target ratios.

The JSON shape (``bench/README.md`` documents it; ``tests/test_bench_smoke.py`` checks it)::

    {"versions": {...}, "commands": {...},
     "scenarios": {"<scenario>": {"concurrency": 32, "duration_s": 30,
                                  "contenders": {"<name>": {"rps": 0.0, "cpu_ms_per_ok": 0.0,
                                                            "p50_ms": 0.0, "p95_ms": 0.0,
                                                            "p99_ms": 0.0, "errors": 0,
                                                            "peak_rss_mb": 0.0,
                                                            "extra": {...}}}}}}

A scenario that could not run has ``"skipped": "<reason>"`` and no contenders.
:func:`derive` adds what needs two scenarios of one run (CPU per refusal under overload, the
best goodput at lower concurrency); :func:`targets` evaluates every target on a document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MISS_SCENARIOS = ("miss", "miss_webp", "miss_4000_webp", "miss_alpha", "cdn_mix")
# A miss of almost no pixels: the fixed costs of a request and a transform, no CPU goal.
FIXED_COST_SCENARIO = "miss_tiny"
OVERLOAD_SCENARIOS = {
    "overload": "miss",
    "overload_webp": "miss_webp",
    "overload_4000_webp": "miss_4000_webp",
    "overload_alpha": "miss_alpha",
    "overload_cdn_mix": "cdn_mix",
}
SCENARIOS = (
    *MISS_SCENARIOS, FIXED_COST_SCENARIO, "hit", "mixed", "fairness", *OVERLOAD_SCENARIOS, "jobs"
)
METRIC_KEYS = ("rps", "cpu_ms_per_ok", "p50_ms", "p95_ms", "p99_ms", "errors", "peak_rss_mb")
SCENARIO_KEYS = ("concurrency", "duration_s", "contenders")
CONTENDER_ORDER = (
    "imgsrv", "imgsrv_wrk", "imgsrv_c16", "imgsrv_a", "imgsrv_b", "imgsrv_b_idle", "ceiling",
    "pipeline", "bare", "thumbor", "loadgen",
)  # fmt: skip
# imgsrv's CPU per miss is compared under both load generators.
IMGSRV_MISS_CONTENDERS = ("imgsrv", "imgsrv_wrk")
# The results before the miss-path work: output bytes must not grow against them.
BASELINE = Path(__file__).resolve().parents[1] / "results" / "2026-11-23.json"
CPU_GOALS = {"miss": 1.0, "miss_webp": 0.8, "miss_4000_webp": 0.8, "miss_alpha": 0.8,
             "cdn_mix": 0.8}  # fmt: skip
OVERHEAD_MS = 1.5
LOADGEN_AGREEMENT = 0.10
REFUSAL_CPU_MS = 0.1


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


# --------------------------------------------------------------------------- derived figures


def _get(document: Mapping[str, Any], scenario: str, contender: str) -> Mapping[str, Any] | None:
    entry = document.get("scenarios", {}).get(scenario, {}).get("contenders", {}).get(contender)
    return entry if isinstance(entry, Mapping) else None


def per_render(entry: Mapping[str, Any]) -> float:
    """CPU ms per rendered response: revalidations answered 304 left out (cdn_mix)."""
    return float(entry.get("extra", {}).get("cpu_ms_per_render", entry["cpu_ms_per_ok"]))


# An overload run and the runs of the same load generator it is judged against: locust's
# users at c=32 and c=16, wrk's connections at c=32.
OVERLOAD_REFERENCES: dict[str, tuple[str, ...]] = {
    "imgsrv": ("imgsrv", "imgsrv_c16"),
    "imgsrv_wrk": ("imgsrv_wrk",),
}


def derive(document: dict[str, Any]) -> dict[str, Any]:
    """Add the figures that combine two scenarios of the run to the overload entries.

    For each load generator's overload run (``imgsrv``: locust, ``imgsrv_wrk``: wrk):

    * ``reference_cpu_ms_per_ok``: imgsrv's CPU per response on the same workload at c=32,
      from the same load generator;
    * ``cpu_ms_per_refusal``: (server CPU in the window - responses x that reference) /
      refusals: an estimate of what one 503 costs;
    * ``best_goodput_below``: the best rate of successful responses imgsrv reached on the
      same workload at lower concurrency from the same load generator. Each is compared with
      its own: locust's CPU grows with its users, on the cores the server runs on.
    """
    for name, workload in OVERLOAD_SCENARIOS.items():
        for contender, references in OVERLOAD_REFERENCES.items():
            over = _get(document, name, contender)
            if over is not None:
                _derive_overload(over, [_get(document, workload, r) for r in references])
    return document


def _derive_overload(over: dict[str, Any], below: Sequence[Mapping[str, Any] | None]) -> None:
    """``below``: the same load generator's runs of the workload, its c=32 run first."""
    extra = over["extra"]
    reference = below[0]
    if reference is not None and reference["rps"] > 0:
        ref = float(reference["cpu_ms_per_ok"])
        extra["reference_cpu_ms_per_ok"] = ref
        shed = int(extra.get("shed", 0))
        if shed:
            spent = 1000 * float(extra.get("server_cpu_s", 0.0))
            served = int(extra.get("requests_ok", 0)) * ref
            extra["cpu_ms_per_refusal"] = round((spent - served) / shed, 4)
    rates = [float(entry["rps"]) for entry in below if entry is not None]
    if rates:
        extra["best_goodput_below"] = max(rates)


def load_baseline(path: Path = BASELINE) -> Mapping[str, Any]:
    """The earlier results file the output bytes are compared with ({} if missing)."""
    try:
        data: Mapping[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One target of the specification, evaluated on a results document."""

    name: str
    measured: str
    goal: str
    met: bool | None  # None: not measured in this run, or reported without a goal


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


def targets(
    document: Mapping[str, Any], baseline: Mapping[str, Any] | None = None
) -> list[Target]:
    """Every target, measured on ``document`` (output bytes against ``baseline``)."""
    found = _cpu_targets(document)
    found.append(_fixed_cost_reference(document))
    found += _overhead_targets(document)
    found += _loadgen_agreement_targets(document)
    found.append(
        _ratio_target("miss: imgsrv / thumbor req/s", _get(document, "miss", "imgsrv"),
                      _get(document, "miss", "thumbor"), "rps", 1.0)
    )  # fmt: skip
    found += _tail_targets(document)
    found += _bytes_targets(document, baseline if baseline is not None else load_baseline())
    found += _no_shedding_targets(document)
    for name in OVERLOAD_SCENARIOS:
        found += _overload_targets(document, name)
    found += _loadgen_floor(document)
    found += _fairness_targets(document)
    found += _hit_targets(document)
    found += _memory_targets(_get(document, "miss", "imgsrv"))
    found += _loadgen_targets(document)
    return found


def _measured(entries: list[Mapping[str, Any] | None]) -> bool:
    return all(e is not None and e["rps"] > 0 for e in entries)


def _failed(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """Why CPU per response does not compare: a contender failed over 1% of its requests.

    A server that refuses most misses serves a different mix (cheap revalidations, few
    renders) and pays for the refusals: its CPU per response is not a miss's cost.
    """
    for name, entry in entries.items():
        failures = int(entry["errors"])
        total = failures + int(entry.get("extra", {}).get("requests_ok", 0))
        if total and failures > 0.01 * total:
            return f"; not comparable: {name} failed {failures} of {total} requests"
    return ""


def _cpu_targets(document: Mapping[str, Any]) -> list[Target]:
    found = []
    for scenario, goal in CPU_GOALS.items():
        name = f"{scenario}: server CPU per response, imgsrv / thumbor"
        imgsrv, thumbor = _get(document, scenario, "imgsrv"), _get(document, scenario, "thumbor")
        if not _measured([imgsrv, thumbor]):
            found.append(Target(name, "not measured", f"<= {goal:g}", None))
            continue
        assert imgsrv is not None and thumbor is not None
        target = _ratio_target(name, imgsrv, thumbor, "cpu_ms_per_ok", goal, False)
        why = _failed({"imgsrv": imgsrv, "thumbor": thumbor})
        if why:
            target = Target(name, target.measured + why, target.goal, False)
        found.append(target)
    return found


def _fixed_cost_reference(document: Mapping[str, Any]) -> Target:
    """What a miss of a 64 px source costs each contender: no pixels, only fixed costs."""
    parts = [
        f"{c} {float(e['cpu_ms_per_ok']):.2f}"
        for c in ("imgsrv", "imgsrv_wrk", "thumbor", "pipeline", "ceiling")
        if (e := _get(document, FIXED_COST_SCENARIO, c)) is not None and e["rps"] > 0
    ]
    measured = "ms: " + ", ".join(parts) if parts else "not measured"
    return Target(f"{FIXED_COST_SCENARIO}: CPU per miss (reference)", measured, "", None)


def _overhead_targets(document: Mapping[str, Any]) -> list[Target]:
    found = []
    for scenario in (*MISS_SCENARIOS, FIXED_COST_SCENARIO):
        pipeline = _get(document, scenario, "pipeline")
        for contender in IMGSRV_MISS_CONTENDERS:
            name = f"{scenario}: serving overhead ({contender}): CPU per miss - pipeline's"
            entry = _get(document, scenario, contender)
            if not _measured([entry, pipeline]):
                found.append(Target(name, "not measured", f"<= {OVERHEAD_MS:g} ms", None))
                continue
            assert entry is not None and pipeline is not None
            gap = per_render(entry) - float(pipeline["cpu_ms_per_ok"])
            detail = f"{gap:.2f} ms ({per_render(entry):.2f} - {pipeline['cpu_ms_per_ok']:.2f})"
            why = _failed({contender: entry})
            met = gap <= OVERHEAD_MS and not why
            found.append(Target(name, detail + why, f"<= {OVERHEAD_MS:g} ms", met))
    return found


def _loadgen_agreement_targets(document: Mapping[str, Any]) -> list[Target]:
    found = []
    goal = f"within {LOADGEN_AGREEMENT:.0%}"
    for scenario in MISS_SCENARIOS:
        name = f"{scenario}: imgsrv CPU per miss, wrk / locust"
        wrk, locust = _get(document, scenario, "imgsrv_wrk"), _get(document, scenario, "imgsrv")
        if not _measured([wrk, locust]):
            found.append(Target(name, "not measured", goal, None))
            continue
        assert wrk is not None and locust is not None
        ratio = per_render(wrk) / per_render(locust) if per_render(locust) else 0.0
        detail = f"{ratio:.2f}x ({per_render(wrk):.2f} / {per_render(locust):.2f} ms)"
        why = _failed({"wrk": wrk, "locust": locust})
        met = abs(ratio - 1) <= LOADGEN_AGREEMENT and not why
        found.append(Target(name, detail + why, goal, met))
    return found


def _tail_targets(document: Mapping[str, Any]) -> list[Target]:
    """p99 / p50 of the misses; in cdn_mix of the rendered answers (locust knows which)."""
    found = []
    for scenario in MISS_SCENARIOS:
        for contender in IMGSRV_MISS_CONTENDERS:
            entry = _get(document, scenario, contender)
            name = f"{scenario}: {contender} p99 / p50"
            if entry is not None and "render_p50_ms" in entry["extra"]:
                extra = entry["extra"]
                found.append(_ratio_target(name + " (renders)", extra, extra, "render_p99_ms",
                                           1.3, False, "render_p50_ms"))  # fmt: skip
                continue
            found.append(_ratio_target(name, entry, entry, "p99_ms", 1.3, False, "p50_ms"))
    return found


def _bytes_targets(document: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[Target]:
    """Bytes per response of every scenario; imgsrv's may not grow against the baseline."""
    found = []
    for scenario in (*MISS_SCENARIOS, "hit", "mixed"):
        imgsrv = _get(document, scenario, "imgsrv")
        if imgsrv is None:
            continue
        now = float(imgsrv["extra"].get("bytes_per_response", 0.0))
        others = [
            f"{c} {float(e['extra'].get('bytes_per_response', 0.0)):,.0f}"
            for c in ("thumbor", "ceiling")
            if (e := _get(document, scenario, c)) is not None
        ]
        detail = f"imgsrv {now:,.0f}" + (f" ({', '.join(others)})" if others else "")
        bodies = [
            f"{c} {float(e['extra']['bytes_per_body']):,.0f}"
            for c in ("imgsrv", "thumbor")
            if (e := _get(document, scenario, c)) is not None and "bytes_per_body" in e["extra"]
        ]
        if bodies:
            detail += "; per body: " + ", ".join(bodies)
        before = _get(baseline, scenario, "imgsrv")
        previous = float(before["extra"].get("output_bytes", 0)) if before else 0.0
        if previous and scenario in MISS_SCENARIOS:
            found.append(Target(f"{scenario}: bytes per response", detail,
                                f"<= {previous:,.0f} (before)", now <= previous))  # fmt: skip
        else:
            found.append(Target(f"{scenario}: bytes per response", detail, "reported", None))
    return found


def _statuses(entry: Mapping[str, Any]) -> dict[str, int]:
    return dict(entry.get("extra", {}).get("statuses", {}))


def _no_shedding_targets(document: Mapping[str, Any]) -> list[Target]:
    found = []
    for contender, users in (("imgsrv_c16", 16), ("imgsrv", 32), ("imgsrv_wrk", 32)):
        name = f"miss_4000_webp: 503s at c={users} ({contender})"
        entry = _get(document, "miss_4000_webp", contender)
        if entry is None:
            found.append(Target(name, "not measured", "0", None))
            continue
        refused = _statuses(entry).get("503", 0)
        found.append(Target(name, str(refused), "0", refused == 0))
    return found


def _overload_targets(document: Mapping[str, Any], name: str) -> list[Target]:
    found = []
    for contender in OVERLOAD_REFERENCES:
        over = _get(document, name, contender)
        if over is not None:
            label = name if contender == "imgsrv" else f"{name} (wrk)"
            found += _overload_run_targets(label, over)
    return found or [Target(name, "not measured", "", None)]


def _overload_run_targets(name: str, over: Mapping[str, Any]) -> list[Target]:
    extra = over.get("extra", {})
    shed = int(extra.get("shed", 0))
    found = []
    best = extra.get("best_goodput_below")
    if best:
        ratio = over["rps"] / best
        found.append(Target(f"{name}: goodput / best at lower concurrency",
                            f"{ratio:.2f}x ({over['rps']:g} / {best:g} req/s)", ">= 0.9",
                            ratio >= 0.9))  # fmt: skip
    else:
        found.append(Target(f"{name}: goodput / best at lower concurrency",
                            f"{over['rps']:g} req/s, no lower-concurrency run", ">= 0.9", None))
    reference = extra.get("reference_cpu_ms_per_ok")
    if reference:
        ratio = float(over["cpu_ms_per_ok"]) / float(reference)
        found.append(Target(f"{name}: server CPU per success (refusals included) / at c=32",
                            f"{ratio:.2f}x ({over['cpu_ms_per_ok']:g} / {reference:g} ms)",
                            "reference", None))  # fmt: skip
    per_refusal = extra.get("cpu_ms_per_refusal")
    if per_refusal is not None:
        detail = (f"{per_refusal:.3f} ms over {shed} refusals "
                  f"({extra.get('shed_per_s', 0):g}/s{_shed_times(extra)})")  # fmt: skip
        # Below zero, the successes cost less than at c=32: the estimate says nothing then.
        met = per_refusal <= REFUSAL_CPU_MS if per_refusal >= 0 else None
        found.append(Target(f"{name}: CPU per refusal (estimate)", detail,
                            f"<= {REFUSAL_CPU_MS:g} ms", met))
    else:
        detail = "no request was refused" if not shed else "no c=32 reference in this run"
        found.append(Target(f"{name}: CPU per refusal (estimate)", detail,
                            f"<= {REFUSAL_CPU_MS:g} ms", None))
    direct = extra.get("refusal_direct")
    if direct is not None:
        found += _direct_refusal_targets(name, direct)
    retry = extra.get("retry_after", {})
    missing = int(retry.get("missing", 0))
    values = (f"; Retry-After min/median/max {retry['min_s']:g}/{retry['median_s']:g}/"
              f"{retry['max_s']:g} s" if "min_s" in retry else "")  # fmt: skip
    found.append(Target(f"{name}: 503 without Retry-After", f"{missing} of {shed}{values}", "0",
                        missing == 0 if shed else None))
    failures = int(over["errors"])
    found.append(Target(f"{name}: errors other than 503 (timeouts {extra.get('timeouts', 0)})",
                        str(failures), "0", failures == 0))
    return found


def _direct_refusal_targets(name: str, direct: Mapping[str, Any]) -> list[Target]:
    """CPU per refusal of a server that refuses everything (bench/harness/refusals.py), and
    against bare starlette holding and sending the same answer at the same connections."""
    label = f"{name}: CPU per refusal (measured: every request refused)"
    goal = f"<= {REFUSAL_CPU_MS:g} ms"
    if "cpu_ms_per_refusal" not in direct:
        return [Target(label, f"not measured: {direct.get('skipped', '')}", goal, None)]
    per_refusal = float(direct["cpu_ms_per_refusal"])
    detail = (f"{per_refusal:.3f} ms over {direct['refusals']} refusals "
              f"({direct['refusals_per_s']:g}/s at c={direct['users']}, idle CPU "
              f"{direct['idle_cpu_pct']:g}% taken off)")  # fmt: skip
    found = [Target(label, detail, goal, per_refusal <= REFUSAL_CPU_MS)]
    bare = direct.get("bare", {})
    if "cpu_ms_per_refusal" in bare:
        floor = float(bare["cpu_ms_per_refusal"])
        found.append(Target(f"{name}: CPU per refusal / bare starlette's held 503",
                            f"{per_refusal / floor:.2f}x ({per_refusal:.3f} / {floor:.3f} ms at "
                            f"{bare['refusals_per_s']:g}/s)", "reference", None))  # fmt: skip
    return found


def _shed_times(extra: Mapping[str, Any]) -> str:
    """The refusals' latencies, where the load generator has them apart (wrk has not)."""
    if not extra.get("shed_p99_ms"):
        return ""
    return f", p50/p99 {extra.get('shed_p50_ms', 0):.1f}/{extra['shed_p99_ms']:.1f} ms"


def _loadgen_floor(document: Mapping[str, Any]) -> list[Target]:
    """The load generator's own latency at c=256: every timing of the scenario includes it."""
    probe = _get(document, "overload", "loadgen")
    if probe is None:
        return []
    return [
        Target("overload: load generator p99 at c=256 against nginx (its own floor)",
               f"{probe['p99_ms']:.1f} ms (p50 {probe['p50_ms']:.1f} ms)", "reference", None)
    ]  # fmt: skip


def _fairness_targets(document: Mapping[str, Any]) -> list[Target]:
    a = _get(document, "fairness", "imgsrv_a")
    b = _get(document, "fairness", "imgsrv_b")
    idle = _get(document, "fairness", "imgsrv_b_idle")
    if a is None or b is None or idle is None:
        return [Target("fairness", "not measured", "", None)]
    ratio = _ratio(float(b["p95_ms"]), float(idle["p95_ms"]))
    detail = (f"{ratio:.2f}x ({b['p95_ms']:g} / {idle['p95_ms']:g} ms; B {b['rps']:g} req/s, "
              f"alone {idle['rps']:g})" if ratio is not None else "undefined")  # fmt: skip
    clear = b.get("extra", {}).get("clear_of_stalls")
    if clear and ratio is not None:
        stalls = b["extra"]["host_stalls"]
        detail += (f"; {stalls['count']} machine stalls (max {stalls['max_ms']:g} ms): B's p95 "
                   f"of the {clear['responses']} requests no stall overlapped {clear['p95_ms']:g} "
                   f"ms, {clear['p95_ms'] / float(idle['p95_ms']):.2f}x")  # fmt: skip
    return [
        Target("fairness: client B p95 / B's p95 alone", detail, "<= 2",
               ratio is not None and ratio <= 2),
        Target("fairness: client A still served",
               f"{a['rps']:g} req/s, p50/p95 {a['p50_ms']:g}/{a['p95_ms']:g} ms, "
               f"errors {a['errors']}", "> 0 req/s", a["rps"] > 0),
    ]  # fmt: skip


def _hit_targets(document: Mapping[str, Any]) -> list[Target]:
    hit = _get(document, "hit", "imgsrv")
    bare = _get(document, "hit", "bare")
    return [
        _ratio_target("hit: imgsrv / bare rps", hit, bare, "rps", 0.8),
        _ratio_target("hit: imgsrv / thumbor (result storage) rps", hit,
                      _get(document, "hit", "thumbor"), "rps", 6.0),
        _ratio_target("hit: imgsrv p99 / bare p99", hit, bare, "p99_ms", 2.0, False),
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


def _note(extra: Mapping[str, Any]) -> str:
    notes = []
    if "shed" in extra:
        rate = f"{extra['shed']} shed (503, {extra.get('shed_per_s', 0):g}/s)"
        notes.append(rate + _shed_times(extra))
    if "cpu_ms_per_refusal" in extra:
        notes.append(f"CPU per refusal ~{extra['cpu_ms_per_refusal']:.3f} ms")
    retry = extra.get("retry_after")
    if retry and "min_s" in retry:
        notes.append(
            f"Retry-After {retry['min_s']:g}/{retry['median_s']:g}/{retry['max_s']:g} s "
            f"(min/median/max), {retry['missing']} without"
        )
    elif retry:
        notes.append(f"{retry['missing']} 503s without Retry-After")
    if "redis_cpu_ms_per_ok" in extra:
        notes.append(f"Redis {extra['redis_cpu_ms_per_ok']:.2f} ms/ok")
    if "cpu_ms_per_render" in extra:
        notes.append(
            f"{extra['cpu_ms_per_render']:.2f} ms per render ({extra['not_modified']} 304s)"
        )
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
    if "host_stalls" in extra:
        stalls = extra["host_stalls"]
        notes.append(f"machine stalls {stalls['count']} (max {stalls['max_ms']:.0f} ms)")
    if "statuses" in extra:
        notes.append("statuses " + ", ".join(f"{k}: {v}" for k, v in extra["statuses"].items()))
    if len(extra.get("rounds_rps", [])) > 1:
        notes.append("rounds " + "/".join(f"{v:g}" for v in extra["rounds_rps"]))
    if "other_requests" in extra:
        notes.append("also " + ", ".join(f"{k}: {v}" for k, v in extra["other_requests"].items()))
    return "; ".join(notes)


def markdown(document: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    """The results table, the targets table and the versions, as markdown."""
    lines = [
        "| scenario | c | contender | req/s | CPU ms/ok | bytes/resp | p50 ms | p95 ms | p99 ms "
        "| errors | peak RSS MiB | notes |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, scenario in document.get("scenarios", {}).items():
        if scenario.get("skipped"):
            lines.append(f"| {name} | {scenario['concurrency']} | — | skipped: "
                         f"{scenario['skipped']} | | | | | | | | |")  # fmt: skip
            continue
        contenders = scenario["contenders"]
        ordered = sorted(contenders, key=lambda c: (_order(c), c))
        for contender in ordered:
            m = contenders[contender]
            extra = m.get("extra", {})
            users = extra.get("concurrency", scenario["concurrency"])
            lines.append(
                f"| {name} | {users} | {contender} | {_fmt(m['rps'])} | "
                f"{_fmt(m['cpu_ms_per_ok'])} | {extra.get('bytes_per_response', 0):,.0f} | "
                f"{_fmt(m['p50_ms'])} | {_fmt(m['p95_ms'])} | {_fmt(m['p99_ms'])} | "
                f"{m['errors']} | {m['peak_rss_mb']:.0f} | {_note(extra)} |"
            )
    lines += ["", "| target | measured | goal | met |", "| --- | --- | --- | --- |"]
    for target in targets(document, baseline):
        met = {True: "yes", False: "**no**", None: "—"}[target.met]
        lines.append(f"| {target.name} | {target.measured} | {target.goal} | {met} |")
    lines += ["", "<details><summary>versions</summary>", ""]
    lines += [f"* {k}: {v}" for k, v in document.get("versions", {}).items()]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _order(contender: str) -> int:
    return CONTENDER_ORDER.index(contender) if contender in CONTENDER_ORDER else 99
