"""The benchmark harness still works: a seconds-long ``bench/run.py --smoke`` of imgsrv alone.

Only the harness is checked (it runs, stops everything it started, and writes the results
document in its documented shape); no number is compared with anything, because numbers on
a shared machine are noise at this length.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import report
from bench.harness.proctree import tree_pids

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 150

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
    assert list(document["scenarios"]) == list(report.SCENARIOS)
    for name, scenario in document["scenarios"].items():
        assert isinstance(scenario["concurrency"], int), name
        assert isinstance(scenario["duration_s"], int | float), name
        if scenario.get("skipped"):
            assert isinstance(scenario["skipped"], str) and scenario["contenders"] == {}
            continue
        # --smoke measures imgsrv alone.
        assert set(scenario["contenders"]) == {"imgsrv"}, name
        metrics = scenario["contenders"]["imgsrv"]
        for key in report.METRIC_KEYS:
            assert metrics[key] >= 0, (name, key)
        assert isinstance(metrics["errors"], int)


def test_markdown_lists_every_scenario(
    smoke: Smoke,
) -> None:
    _, out = smoke
    table = out.with_suffix(".md").read_text()
    for name in report.SCENARIOS:
        assert f"| {name} |" in table


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
