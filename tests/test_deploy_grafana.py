"""deploy/grafana: the dashboard follows Grafana's dashboard model and shows what it must.

Grafana's own schema comes as the grafana-foundation-sdk package, generated from it (the
models of Grafana 11.6 here). Decoding the JSON into those models and encoding it again
keeps every field the schema knows; a field that is lost on the way is one Grafana does not
know (a typo, or a field of another version), and fails the test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client import Counter, Gauge, Histogram

from imgsrv import metrics

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "imgsrv.json"
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
# Metrics that another part of imgsrv exports and that are not in this tree yet: the worker
# registry's imgsrv_workers_online. Drop the name here once imgsrv.metrics defines it.
def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in data["panels"] if p["type"] != "row"]


def lost_fields(ours: Any, model: Any, path: str = "") -> list[str]:
    """Paths in ``ours`` that the model's round trip dropped or changed."""
    if isinstance(ours, dict):
        if not isinstance(model, dict):
            return [f"{path}: not an object in the model"]
        found = []
        for key, value in ours.items():
            if key not in model:
                found.append(f"{path}.{key}: not in Grafana's dashboard model")
            else:
                found += lost_fields(value, model[key], f"{path}.{key}")
        return found
    if isinstance(ours, list):
        if not isinstance(model, list) or len(model) != len(ours):
            return [f"{path}: list changed"]
        return [
            e
            for i, (a, b) in enumerate(zip(ours, model, strict=True))
            for e in lost_fields(a, b, f"{path}[{i}]")
        ]
    return [] if ours == model else [f"{path}: {ours!r} became {model!r}"]


def test_the_dashboard_survives_grafanas_model_unchanged() -> None:
    register_default_plugins()
    data = load()
    model = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    assert lost_fields(data, model) == []


def test_the_round_trip_notices_a_misspelt_field() -> None:
    register_default_plugins()
    data = load()
    panels(data)[0]["fieldConfig"]["defaults"]["unitt"] = "s"
    model = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    assert any("unitt" in problem for problem in lost_fields(data, model))


def test_the_dashboard_imports_as_it_is() -> None:
    data = load()
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    assert "id" not in data, "an id would clash with the importing Grafana's dashboards"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in data["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip() and target["refId"]
            for name in re.findall(r"\$(?:\{)?([a-z_]+)", target["expr"]):
                assert name in variables or name.startswith("__"), name


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    data = load()
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def exported_names() -> set[str]:
    """Every series name imgsrv.metrics exports."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names |= {value._name + "_total"}
        elif isinstance(value, Histogram):
            names |= {value._name + suffix for suffix in ("_bucket", "_sum", "_count")}
        elif isinstance(value, Gauge):
            names.add(value._name)
    return names


def metric_names(expr: str) -> set[str]:
    # Not the parts of recording rules' names (level:metric:operations).
    return set(re.findall(r"(?<![:\w])imgsrv_[a-z0-9_]+(?![:\w])", expr))


def test_every_query_and_rule_reads_metrics_imgsrv_exports() -> None:
    exported = exported_names()
    used = {name for p in panels(load()) for t in p["targets"] for name in metric_names(t["expr"])}
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= metric_names(rule["expr"])
    assert used - exported == set()


def test_the_dashboard_shows_each_thing_an_operator_watches() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels(load())}
    everything = " ".join(exprs.values())
    for needed in (
        r"sum by \(status\) \(rate\(imgsrv_http_requests_total",
        r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(imgsrv_http_request_duration",
        r'tier="l1", event="hit"',
        r'tier="l2", event="hit"',
        r"imgsrv_l1_bytes",
        r"imgsrv_pool_admitted",
        r"imgsrv_pool_wait_seconds",
        r"sum by \(format\) \(rate\(imgsrv_transform_duration_seconds_count",
        r"imgsrv_source_fetch_duration_seconds_count",
        r"max by \(priority\) \(imgsrv_jobs_queued",
        r"sum by \(outcome\) \(rate\(imgsrv_jobs_finished_total",
        r"sum by \(outcome\) \(rate\(imgsrv_job_callbacks_total",
        r"sum by \(format\) \(rate\(imgsrv_egress_bytes_total",
        r"imgsrv_egress_month_bytes.*imgsrv_egress_budget_bytes",
        r"imgsrv_egress_saver_active",
        r"imgsrv_workers_online",
    ):
        assert re.search(needed, everything), needed
    per_instance = [title for title, expr in exprs.items() if "by (instance" in expr]
    assert len(per_instance) >= 6, per_instance
