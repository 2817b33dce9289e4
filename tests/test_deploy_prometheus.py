"""deploy/prometheus: the rules load in promtool, and their unit tests cover every alert."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

# What the alerts must watch (one alert each, or one per budget level).
REQUIRED_ALERTS = {
    "ImgsrvHigh5xxRatio",
    "ImgsrvHighLatencyP99",
    "ImgsrvShedding",
    "ImgsrvJobBacklog",
    "ImgsrvOldestJobWaiting",
    "ImgsrvWorkersMissing",
    "ImgsrvRedisBreakerOpen",
    "ImgsrvL2HitRatioCollapsed",
    "ImgsrvEgressBudget80",
    "ImgsrvEgressBudget90",
    "ImgsrvEgressBudget96",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120, check=False
    )


def alerts() -> dict[str, dict[str, object]]:
    rules = yaml.safe_load((RULES_DIR / "rules.yml").read_text())
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_the_rules_hold_every_required_alert() -> None:
    assert set(alerts()) == REQUIRED_ALERTS


def test_egress_alerts_are_at_80_90_and_96_percent_of_the_budget() -> None:
    found = {name: rule["expr"] for name, rule in alerts().items() if "Egress" in name}
    assert found == {
        "ImgsrvEgressBudget80": "namespace:imgsrv_egress_budget:ratio >= 0.80",
        "ImgsrvEgressBudget90": "namespace:imgsrv_egress_budget:ratio >= 0.90",
        "ImgsrvEgressBudget96": "namespace:imgsrv_egress_budget:ratio >= 0.96",
    }


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    checked = promtool("check", "rules", "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


@needs_promtool
def test_promtool_unit_tests_pass_and_fire_every_alert() -> None:
    tested = promtool("test", "rules", "rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = yaml.safe_load((RULES_DIR / "rules.test.yml").read_text())["tests"]
    fired = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if check["exp_alerts"]
    }
    assert fired == REQUIRED_ALERTS


@needs_promtool
def test_promtool_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    # The unit tests would notice a changed threshold: they are not a formality.
    for name in ("rules.yml", "rules.test.yml"):
        shutil.copy(RULES_DIR / name, tmp_path / name)
    rules = tmp_path / "rules.yml"
    rules.write_text(rules.read_text().replace("ratio >= 0.90", "ratio >= 0.95"))
    assert PROMTOOL is not None
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "rules.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tested.returncode != 0
    assert "ImgsrvEgressBudget90" in tested.stdout + tested.stderr


def test_the_example_configuration_loads_the_rules_and_keeps_the_labels() -> None:
    # promtool check config would need Kubernetes service discovery, which Debian's
    # Prometheus is built without; its structure is checked here.
    config = yaml.safe_load((RULES_DIR / "prometheus.example.yml").read_text())
    assert config["rule_files"] == ["rules.yml"]
    (job,) = config["scrape_configs"]
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"namespace", "pod", "__address__", "__metrics_path__"} <= targets
