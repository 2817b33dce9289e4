"""A real Prometheus scrapes a real ``imgsrv serve`` under a little load; then every dashboard
query, every recording rule, every alert, the autoscalers' queries and ``imgsrv report`` are
evaluated through Prometheus's HTTP API. Each must parse and return data.

An alert's expression is a comparison that returns nothing while all is well, so it is
evaluated twice: as written (it must parse), and with its top-level comparisons made
``bool`` ones, which return 0 or 1 for every series the comparison looks at (there must be
such series: an alert on a series that does not exist would never fire).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.origin import Origin
from tests.servers import ImgsrvProcess, RedisProcess, free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS = shutil.which("prometheus")
PHOTO = "files/orientation/Landscape_1.jpg"
NAMESPACE = "imgsrv"  # the namespace the manifests' queries name
KEY = "k3y-live"

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")



class Prometheus:
    """A Prometheus server on a free 127.0.0.1 port, scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DEPLOY / "prometheus" / "rules.yml")],
            "scrape_configs": [
                {
                    "job_name": "imgsrv",
                    "static_configs": [
                        {"targets": [target], "labels": {"namespace": NAMESPACE, "pod": "imgsrv-0"}}
                    ],
                }
            ],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.data = workdir / "tsdb"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        assert PROMETHEUS is not None
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read()  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready")

    def query(self, expr: str) -> dict[str, Any]:
        answer = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = answer.json()
        return body

    def result(self, expr: str) -> list[dict[str, Any]]:
        body = self.query(expr)
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        found: list[dict[str, Any]] = body["data"]["result"]
        return found

    def stop(self) -> None:
        stop_process(self.process, 10)


def load(server: ImgsrvProcess, origin: Origin) -> None:
    """A little of everything: misses and hits of several formats, errors, jobs, callbacks."""
    shop = {"Authorization": f"Bearer {KEY}"}
    photo = origin.url(PHOTO)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for width in (120, 160, 200):
            for _ in range(6):  # both worker processes: L1 hits, and L2 hits in the other
                assert http.get(f"/_/w:{width}/plain/{photo}", headers=shop).status_code == 200
        for fmt in ("webp", "png"):
            assert http.get(f"/_/w:150/f:{fmt}/plain/{photo}").status_code == 200
        avif = http.get(f"/_/w:140/f:auto/plain/{photo}", headers={"Accept": "image/avif"})
        assert avif.headers["content-type"] == "image/avif"
        assert http.head(f"/_/w:120/plain/{photo}").status_code == 200
        assert http.get(f"/info/_/plain/{photo}").status_code == 200
        assert http.get(f"/_/w:80/plain/{origin.url('files/missing.jpg')}").status_code == 404
        assert http.get(f"/_/w:80/plain/{origin.url('status/500')}").status_code == 502
        assert http.get(f"/_/w:bad/plain/{photo}").status_code == 400
        jobs = [
            {
                "source": photo,
                "variants": [{"w": 90}, {"w": 100, "f": "webp"}],
                "callback_url": origin.url("status/204"),
            },
            {"source": origin.url("files/missing.jpg"), "variants": [{"w": 90}]},
        ]
        ids = [http.post("/v1/jobs", json=job, headers=shop).json()["id"] for job in jobs]
        deadline = time.monotonic() + 60
        finished: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            finished = [http.get(f"/v1/jobs/{i}", headers=shop).json() for i in ids]
            if all(job["status"] in ("succeeded", "failed") for job in finished):
                break
            time.sleep(0.2)
        assert [job["status"] for job in finished] == ["succeeded", "failed"]
        for variant in finished[0]["variants"]:  # rendered by the job: an L2 hit now
            path = variant["result"]["url"].removeprefix(server.url)
            assert http.get(path).status_code == 200


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, origin_server: Origin
) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("monitoring")
    redis = RedisProcess(workdir / "redis").start()
    env = {
        "IMGSRV_WORKERS": "2",
        "IMGSRV_REDIS_URL": redis.url,
        "IMGSRV_ALLOW_SOURCE_NETWORKS": "127.0.0.0/8",
        "IMGSRV_API_KEYS": f"shop:{KEY}",
        "IMGSRV_EGRESS_MONTHLY_BUDGET": "1GB",
    }
    server = ImgsrvProcess(env, cwd=workdir)
    prom = Prometheus(workdir, f"127.0.0.1:{server.port}")
    try:
        server.start()
        prom.start()
        # Twice: a counter's first sample is its base, so what the first round counts before
        # Prometheus saw its series is not in an increase(); the second round all is.
        for finished_jobs in (2, 4):
            load(server, origin_server)
            wait_for_scrapes(prom, finished_jobs)
        prom.report_url = server.url  # type: ignore[attr-defined]
        yield prom
    finally:
        prom.stop()
        server.stop()
        redis.stop()


def wait_for_scrapes(prom: Prometheus, finished_jobs: int) -> None:
    """Until Prometheus has scraped the load's end and evaluated its rules on it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = prom.result("sum(imgsrv_jobs_finished_total)")
        recorded = prom.result("namespace:imgsrv_l2_hit_ratio:avg1d")
        if done and float(done[0]["value"][1]) >= finished_jobs and recorded:
            break
        time.sleep(0.5)
    time.sleep(3)  # a few more scrapes and rule evaluations


def with_bool(expr: str) -> str:
    """``expr`` with ``bool`` after each comparison operator outside brackets and strings."""
    out: list[str] = []
    depth, i, quote = 0, 0, ""
    while i < len(expr):
        ch = expr[i]
        if quote:
            out.append(ch)
            if ch == "\\":
                out.append(expr[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
            out.append(ch)
        elif ch in "([{":
            depth += 1
            out.append(ch)
        elif ch in ")]}":
            depth -= 1
            out.append(ch)
        elif depth == 0 and (
            op := next((o for o in (">=", "<=", "==", "!=", ">", "<") if expr.startswith(o, i)), "")
        ):
            out.append(op + " bool")
            i += len(op)
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def test_with_bool_touches_only_top_level_comparisons() -> None:
    assert with_bool('a{x!="1"} > 0.5') == 'a{x!="1"} > bool 0.5'
    assert (
        with_bool("max(a > 1) < 2 and on (n) b >= 3")
        == "max(a > 1) < bool 2 and on (n) b >= bool 3"
    )


def dashboard_queries() -> dict[str, str]:
    data = json.loads((DEPLOY / "grafana" / "imgsrv.json").read_text())
    found = {}
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in (
                ("$__rate_interval", "1m"),
                ("$namespace", ".*"),
                ("$instance", ".*"),
            ):
                expr = expr.replace(variable, value)
            found[f"panel {panel['title']} {target['refId']}"] = expr
    return found


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def check_returns_data(prom: Prometheus, name: str, expr: str) -> None:
    result = prom.result(expr)
    assert result, f"{name}: no data for {expr}"


def test_every_dashboard_query_returns_data(prometheus: Prometheus) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 40
    for name, expr in queries.items():
        check_returns_data(prometheus, name, expr)


def test_the_dashboard_variables_find_the_deployment(prometheus: Prometheus) -> None:
    for label in ("namespace", "instance"):
        answer = httpx.get(
            f"{prometheus.url}/api/v1/label/{label}/values",
            params={"match[]": "imgsrv_http_requests_total"},
        ).json()
        assert answer["status"] == "success" and answer["data"], label


def test_every_recording_rule_returns_data(prometheus: Prometheus) -> None:
    records = [r for r in rules() if "record" in r]
    assert len(records) >= 15
    for rule in records:
        check_returns_data(prometheus, f"record {rule['record']}", rule["expr"])
        check_returns_data(prometheus, f"recorded {rule['record']}", rule["record"])


def test_every_alert_parses_and_watches_existing_series(prometheus: Prometheus) -> None:
    alerts = [r for r in rules() if "alert" in r]
    for rule in alerts:
        prometheus.result(rule["expr"])  # parses, and evaluates
        check_returns_data(prometheus, f"alert {rule['alert']}", with_bool(rule["expr"]))
    firing = prometheus.result('ALERTS{alertstate="firing"}')
    # Errors of the load are a large share of its few requests; nothing else is wrong.
    assert {a["metric"]["alertname"] for a in firing} <= {"ImgsrvHigh5xxRatio"}


def test_the_autoscalers_queries_return_data(prometheus: Prometheus) -> None:
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter.yaml").read_text())
    for key, matchers, group_by in (
        ("rules", f'namespace="{NAMESPACE}",pod=~"imgsrv-0"', "namespace,pod"),
        ("externalRules", f'namespace="{NAMESPACE}"', ""),
    ):
        for rule in adapter[key]:
            series = re.match(r"[\w:]+", rule["seriesQuery"]).group()  # type: ignore[union-attr]
            expr = (
                rule["metricsQuery"]
                .replace("<<.Series>>", series)
                .replace("<<.LabelMatchers>>", matchers)
                .replace("<<.GroupBy>>", group_by)
            )
            result = prometheus.result(expr)
            assert result, f"adapter rule {rule['name']['as']}: no data for {expr}"
            value = float(result[0]["value"][1])
            assert 0 <= value < 1e6, (rule["name"]["as"], value)
    scaled = yaml.safe_load((DEPLOY / "k8s" / "base" / "worker-scaledobject.yaml").read_text())
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert prometheus.result(query), query


def test_report_from_prometheus(prometheus: Prometheus, tmp_path: Path) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    chart = tmp_path / "review.png"
    report = subprocess.run(
        [
            *(sys.executable, "-m", "imgsrv.cli", "report", "--prometheus", prometheus.url),
            *("--from", today, "--to", today, "--selector", f'namespace="{NAMESPACE}"'),
            *("--chart", str(chart)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    text = report.stdout
    requests = int(re.search(r"\| Requests answered \| ([\d,]+) \|", text)[1].replace(",", ""))  # type: ignore[index]
    assert requests >= 25  # a round: 27 requests, 2 of them /v1/jobs
    assert re.search(r"\| 2xx: [\d,]+ / 3xx: [\d,]+ / 4xx: [1-9][\d,]* / 5xx: [1-9]", text)
    assert re.search(r"\| L1 \(memory\) hit ratio \| \d+\.\d% \|", text)
    assert re.search(r"\| succeeded \| [1-9]", text) and re.search(r"\| failed \| [1-9]", text)
    assert re.search(r"\| Queue wait p50 / p95 \| \d", text)
    assert re.search(r"\| Image bytes served \| [\d.]+ kB \|", text)
    assert re.search(r"\| Monthly budget \| 1\.0 GB \(0\.\d+% used\) \|", text)
    assert re.search(r"\| shop \| [\d.]+ kB", text)
    assert f"]({chart.name})" in text
    import pyvips

    image = pyvips.Image.new_from_file(str(chart))
    assert (image.width, image.height) == (960, 560)
