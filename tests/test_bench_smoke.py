"""The benchmark harness still works: a seconds-long ``bench/run.py --smoke`` of imgsrv alone.

Only the harness is checked (it runs, stops everything it started, and writes the results
document in its documented shape for every scenario the smoke run covers); no number is
compared with anything, because numbers on a shared machine are noise at this length. The
target arithmetic is checked on a made-up document instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import report
from bench.harness.proctree import tree_pids
from bench.harness.scenarios import SCENARIOS, SMOKE_SCENARIOS

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 150
# Contenders of the smoke run's scenarios (imgsrv otherwise); wrk joins the miss workloads.
EXPECTED_CONTENDERS = {"fairness": {"imgsrv_a", "imgsrv_b", "imgsrv_b_idle"}}
WRK_SCENARIOS = set(report.MISS_SCENARIOS) | set(report.OVERLOAD_SCENARIOS)

Smoke = tuple[subprocess.CompletedProcess[str], Path]


def _run_smoke(tmp_path: Path) -> Smoke:
    out = tmp_path / "results.json"
    argv = [
        sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--no-chart",
        "--work", str(tmp_path / "work"), "--out", str(out),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSRV_")}
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the runner stop the servers and load generators it started.
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"bench/run.py --smoke took over {RUN_TIMEOUT} s:\n{stderr[-3000:]}")
    done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    return done, out


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    return _run_smoke(tmp_path_factory.mktemp("bench"))


def test_smoke_run_exits_cleanly(smoke: Smoke) -> None:
    done, out = smoke
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.exists()
    assert out.with_suffix(".md").exists()


def test_results_have_the_documented_shape(
    smoke: Smoke,
) -> None:
    _, out = smoke
    document = json.loads(out.read_text())
    assert report.shape_problems(document) == []
    assert set(document) == {"versions", "commands", "scenarios"}
    assert list(document["scenarios"]) == list(SMOKE_SCENARIOS)
    for name, scenario in document["scenarios"].items():
        assert isinstance(scenario["concurrency"], int), name
        assert isinstance(scenario["duration_s"], int | float), name
        assert not scenario.get("skipped") or name == "jobs", (name, scenario.get("skipped"))
        if scenario.get("skipped"):
            assert isinstance(scenario["skipped"], str) and scenario["contenders"] == {}
            continue
        # --smoke measures imgsrv alone (under locust, and wrk where a miss workload has it).
        expected = EXPECTED_CONTENDERS.get(name, {"imgsrv"})
        if name in WRK_SCENARIOS and shutil.which("wrk"):
            expected = expected | {"imgsrv_wrk"}
        assert set(scenario["contenders"]) == expected, name
        for contender, metrics in scenario["contenders"].items():
            for key in report.METRIC_KEYS:
                assert metrics[key] >= 0, (name, contender, key)
            assert isinstance(metrics["errors"], int)
            extra = metrics["extra"]
            assert extra["requests_ok"] >= 0 and extra["bytes_per_response"] >= 0
            assert extra["server_cpu_s"] >= 0


def test_cpu_per_response_counts_the_servers_and_redis(smoke: Smoke) -> None:
    _, out = smoke
    miss = json.loads(out.read_text())["scenarios"]["miss"]["contenders"]["imgsrv"]
    # A miss costs the server CPU, some of it Redis's: both measured, Redis inside the total.
    assert miss["extra"]["requests_ok"] > 0
    assert miss["cpu_ms_per_ok"] > miss["extra"]["redis_cpu_ms_per_ok"] > 0


@pytest.mark.parametrize("contender", ["imgsrv", "imgsrv_wrk"])
def test_overload_reports_refusals_with_their_retry_after(smoke: Smoke, contender: str) -> None:
    _, out = smoke
    contenders = json.loads(out.read_text())["scenarios"]["overload"]["contenders"]
    if contender not in contenders:
        pytest.skip("wrk is not installed")
    over = contenders[contender]
    extra = over["extra"]
    if extra.get("shed"):
        assert extra["retry_after"]["responses"] == extra["shed"]
        assert extra["shed_without_retry_after"] == extra["retry_after"]["missing"]
        assert "cpu_ms_per_refusal" in extra and "best_goodput_below" in extra
    # A refusal is the intended answer under overload, not an error.
    assert over["errors"] == 0


def test_overload_measures_a_refusal_of_imgsrv_and_of_bare_starlette(smoke: Smoke) -> None:
    _, out = smoke
    extra = json.loads(out.read_text())["scenarios"]["overload"]["contenders"]["imgsrv"]["extra"]
    direct = extra["refusal_direct"]
    if not shutil.which("wrk"):
        assert direct == {"skipped": "wrk is not installed"}
        return
    for measured in (direct, direct["bare"]):
        # every answer a held 503, over the overload scenarios' connections
        assert measured["refusals"] > 0 and measured["other_answers"] == 0
        assert measured["users"] == 256
        assert measured["cpu_ms_per_refusal_with_idle"] >= measured["cpu_ms_per_refusal"] > 0


def test_markdown_lists_every_scenario(
    smoke: Smoke,
) -> None:
    _, out = smoke
    table = out.with_suffix(".md").read_text()
    for name in SMOKE_SCENARIOS:
        assert f"| {name} |" in table
    assert "| CPU ms/ok |" in table


def test_every_scenario_is_in_the_report() -> None:
    assert tuple(SCENARIOS) == report.SCENARIOS
    assert set(SMOKE_SCENARIOS) <= set(SCENARIOS)


def _mentions(pid: int, text: bytes) -> bool:
    for name in ("cmdline", "environ"):
        try:
            if text in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_nothing_is_left_running(smoke: Smoke) -> None:
    _, out = smoke
    # Every process the runner starts names its work folder in its command line or its
    # environment (origin, Redis, imgsrv, locust, wrk); none may outlive the runner.
    work = str(out.parent / "work").encode()
    leftovers = [pid for pid in tree_pids([1]) if _mentions(pid, work)]
    assert not leftovers


def _made_up(rps: float, cpu: float, errors: int = 0, **extra: object) -> dict[str, object]:
    ok = int(rps * 10)
    return {
        "rps": rps, "cpu_ms_per_ok": cpu, "p50_ms": 100.0, "p95_ms": 120.0, "p99_ms": 125.0,
        "errors": errors, "peak_rss_mb": 1.0, "extra": {"requests_ok": ok, **extra},
    }  # fmt: skip


def _document(imgsrv_errors: int = 0) -> dict[str, object]:
    miss = {
        "imgsrv": _made_up(80, 12.0, imgsrv_errors),
        "imgsrv_wrk": _made_up(90, 12.5),
        "pipeline": _made_up(100, 11.0),
        "thumbor": _made_up(70, 13.0),
    }
    # 850 responses at 12 ms and 10,000 refusals in 11.2 s of CPU: 0.1 ms per refusal;
    # under wrk 800 responses at 12.5 ms and 5,000 refusals in 12.5 s: 0.5 ms.
    direct = {"users": 256, "other_answers": 0, "refusals": 2000, "refusals_per_s": 200,
              "idle_cpu_pct": 2.0, "cpu_ms_per_refusal": 0.15,
              "bare": {"refusals_per_s": 210, "cpu_ms_per_refusal": 0.12}}  # fmt: skip
    overload = {
        "imgsrv": _made_up(85, 13.2, shed=10_000, server_cpu_s=11.2, refusal_direct=direct),
        "imgsrv_wrk": _made_up(80, 15.6, shed=5_000, server_cpu_s=12.5),
    }
    return {
        "versions": {}, "commands": {},
        "scenarios": {
            "miss": {"concurrency": 32, "duration_s": 10, "contenders": miss},
            "overload": {"concurrency": 256, "duration_s": 10, "contenders": overload},
        },
    }  # fmt: skip


def test_targets_combine_scenarios_of_one_run() -> None:
    document = report.derive(_document())
    over = document["scenarios"]["overload"]["contenders"]
    # Each load generator's overload run is judged against its own runs at c=32.
    assert over["imgsrv"]["extra"]["reference_cpu_ms_per_ok"] == 12.0
    assert over["imgsrv"]["extra"]["cpu_ms_per_refusal"] == pytest.approx(0.1)
    assert over["imgsrv"]["extra"]["best_goodput_below"] == 80
    assert over["imgsrv_wrk"]["extra"]["reference_cpu_ms_per_ok"] == 12.5
    assert over["imgsrv_wrk"]["extra"]["cpu_ms_per_refusal"] == pytest.approx(0.5)
    assert over["imgsrv_wrk"]["extra"]["best_goodput_below"] == 90
    found = {t.name: t for t in report.targets(document, baseline={})}
    assert found["miss: server CPU per response, imgsrv / thumbor"].met is True  # 12 / 13
    assert found["miss: serving overhead (imgsrv): CPU per miss - pipeline's"].met is True
    assert found["miss: serving overhead (imgsrv_wrk): CPU per miss - pipeline's"].met is True
    assert found["miss: imgsrv CPU per miss, wrk / locust"].met is True  # 12.5 / 12
    assert found["miss: imgsrv / thumbor req/s"].met is True
    assert found["overload: goodput / best at lower concurrency"].met is True  # 85 / 80
    assert found["overload: CPU per refusal (estimate)"].met is True
    assert found["overload: CPU per refusal (measured: every request refused)"].met is False
    floor = found["overload: CPU per refusal / bare starlette's held 503"]
    assert floor.measured.startswith("1.25x") and floor.met is None
    assert found["overload (wrk): goodput / best at lower concurrency"].met is False  # 80 / 90
    assert found["overload (wrk): CPU per refusal (estimate)"].met is False
    ratio = found["overload (wrk): server CPU per success (refusals included) / at c=32"]
    assert ratio.measured.startswith("1.25x") and ratio.met is None
    assert found["miss_webp: server CPU per response, imgsrv / thumbor"].met is None


def test_a_server_that_refuses_misses_does_not_pass_on_cpu() -> None:
    # Cheap because it refused: CPU per response does not compare, the target is not met.
    document = report.derive(_document(imgsrv_errors=500))
    found = {t.name: t for t in report.targets(document, baseline={})}
    cpu = found["miss: server CPU per response, imgsrv / thumbor"]
    assert cpu.met is False and "not comparable" in cpu.measured
