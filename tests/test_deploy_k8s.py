"""deploy/k8s: what `kubectl kustomize` builds is valid Kubernetes, scales on the right signals
and fits how imgsrv sizes itself.

Every built object is validated by the official Kubernetes Python client's models of its
apiVersion and kind: pydantic models generated from the API's OpenAPI document that forbid
unknown fields and check types strictly, so a misspelt or misplaced field fails here rather
than being dropped by the API server. KEDA's ScaledObject has no model there; the models at
the end of this file state the schema of its CustomResourceDefinition (keda.sh/v1alpha1, as in
KEDA's config/crd/bases/keda.sh_scaledobjects.yaml) with the same strictness, and the HPA
behaviour nested in it is checked by the Kubernetes model of that type.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.utils import parse_quantity
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgsrv import serving
from imgsrv.config import load_settings
from imgsrv.jobs.worker import SHUTDOWN_GRACE

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
BUILDS = {"base": K8S / "base", "example": K8S / "overlays" / "example"}
KUBECTL = shutil.which("kubectl")

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

# The server HPA's signals: metric name -> (HPA metric type, target type, high, low). Scale out
# above the high threshold, in only below the low one (docs/operations.md, "Autoscaling").
SIGNALS = {
    "imgsrv_scaling_response_seconds": ("Pods", "AverageValue", 3.0, 1.0),
    "imgsrv_scaling_jobs_ready": ("External", "Value", 15.0, 3.0),
    "imgsrv_scaling_cpu_utilization": ("Pods", "AverageValue", 0.85, 0.30),
    "imgsrv_scaling_oldest_job_seconds": ("External", "Value", 10.0, 1.0),
}


def kustomize(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    built = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(BUILDS))
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return kustomize(BUILDS[request.param])


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (named ``name``, or that with kustomize's hash suffix)."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (
            name is None
            or re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])
        )
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env_of(item: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in item.get("env", [])}


def mounts(item: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in item.get("volumeMounts", [])}


# --------------------------------------------------------------------------- API schemas


def validate(obj: dict[str, Any]) -> None:
    """Validate ``obj`` against the model of its apiVersion and kind; raises on any error."""
    if obj["apiVersion"] == "keda.sh/v1alpha1":
        assert obj["kind"] == "ScaledObject", obj["kind"]
        ScaledObject.model_validate(obj)
        return
    version = obj["apiVersion"].rpartition("/")[2]
    model = getattr(k8s, version.capitalize() + obj["kind"], None)
    assert model is not None, f"no Kubernetes model for {obj['apiVersion']} {obj['kind']}"
    model.model_validate(obj)


def test_the_kubernetes_models_refuse_unknown_fields() -> None:
    # What the strictness of this file rests on.
    assert k8s.V1Deployment.model_config.get("extra") == "forbid"
    with pytest.raises(ValidationError):
        k8s.V1Container.model_validate({"name": "x", "imagee": "typo"})
    with pytest.raises(ValidationError):
        k8s.V1ContainerPort.model_validate({"containerPort": "8080"})


@needs_kubectl
def test_every_object_is_valid_for_its_api(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in objects)
    for required in (
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ScaledObject",
        "Secret",
        "Service",
    ):
        assert required in kinds
    for obj in objects:
        validate(obj)


@needs_kubectl
def test_a_misspelt_field_fails_the_check(objects: list[dict[str, Any]]) -> None:
    deployment = only(objects, "Deployment", "imgsrv-worker")
    container(deployment)["resources"]["limit"] = {"cpu": "1"}
    with pytest.raises(ValidationError, match="limit"):
        validate(deployment)
    scaled = only(objects, "ScaledObject")
    scaled["spec"]["minReplicas"] = 1  # an HPA name, not KEDA's minReplicaCount
    with pytest.raises(ValidationError, match="minReplicas"):
        validate(scaled)


# --------------------------------------------------------------------------- autoscaling


@needs_kubectl
def test_the_server_hpa_scales_on_the_four_signals(objects: list[dict[str, Any]]) -> None:
    hpa = only(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "imgsrv",
    }
    assert hpa["minReplicas"] == 1
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    found = {}
    for metric in hpa["metrics"]:
        source = metric[metric["type"].lower()]
        target = source["target"]
        value = target["averageValue" if target["type"] == "AverageValue" else "value"]
        found[source["metric"]["name"]] = (
            metric["type"],
            target["type"],
            float(parse_quantity(value)),
        )
    assert found == {name: signal[:3] for name, signal in SIGNALS.items()}


def test_each_hpa_metric_is_served_band_shaped_with_its_thresholds() -> None:
    adapter = yaml.safe_load((K8S / "prometheus-adapter.yaml").read_text())
    served = {
        rule["name"]["as"]: (kind, re.match(r"[\w:]+", rule["seriesQuery"]).group())  # type: ignore[union-attr]
        for kind, key in (("Pods", "rules"), ("External", "externalRules"))
        for rule in adapter[key]
    }
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yml").read_text())
    records = {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    assert served.keys() == SIGNALS.keys()
    for name, (kind, _, high, low) in SIGNALS.items():
        assert served[name][0] == kind, name
        expr = records[served[name][1]]
        # (clamp_max(X * (H / L), H) >= X) or X: see rules.yml
        band = re.search(r"clamp_max\(\s*([\w:]+) \* \(([\d.]+) / ([\d.]+)\), ([\d.]+)\)", expr)
        assert band is not None, expr
        assert (float(band[2]), float(band[3]), float(band[4])) == (high, low, high), name
        assert expr.count(band[1]) == 3, expr


@needs_kubectl
def test_keda_scales_the_workers_on_the_queue_of_their_namespace() -> None:
    objects = kustomize(BUILDS["example"])
    scaled = only(objects, "ScaledObject")
    worker = only(objects, "Deployment", "imgsrv-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "imgsrv_jobs_queued" in query
    assert f'namespace="{worker["metadata"]["namespace"]}"' in query
    assert float(trigger["metadata"]["threshold"]) == 15
    assert "replicas" not in worker["spec"], "KEDA owns the worker count"
    assert "replicas" not in only(objects, "Deployment", "imgsrv")["spec"]


# --------------------------------------------------------------------------- the server pod


def pod_settings(objects: list[dict[str, Any]], tmp_path: Path) -> Any:
    """The Settings the server pod builds from its ConfigMap, as imgsrv itself loads them."""
    config = only(objects, "ConfigMap", "imgsrv-config")
    path = tmp_path / "imgsrv.toml"
    path.write_text(config["data"]["imgsrv.toml"])
    return load_settings({"IMGSRV_CONFIG": str(path)})


def pod_of(
    objects: list[dict[str, Any]], name: str, port_name: str, tmp_path: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Any, int]:
    """A Deployment, its pod spec, its container, the pod's Settings and its named port."""
    deployment = only(objects, "Deployment", name)
    box = container(deployment)
    port = {p["name"]: p["containerPort"] for p in box["ports"]}[port_name]
    settings = pod_settings(objects, tmp_path)
    return deployment, deployment["spec"]["template"]["spec"], box, settings, port


@needs_kubectl
def test_the_server_pod_probes_drains_and_runs_locked_down(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    deployment, pod, box, settings, port = pod_of(objects, "imgsrv", "http", tmp_path)
    assert port == settings.port and settings.host == "0.0.0.0"
    assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # preStop waits for the endpoints to go, then SIGTERM's graceful drain must fit too.
    (sleep_command, seconds) = box["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_command == "sleep" and 1 <= int(seconds) <= 15
    assert pod["terminationGracePeriodSeconds"] >= int(seconds) + serving.GRACEFUL_TIMEOUT_SECONDS
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert "--uid 10001" in (REPO / "Dockerfile").read_text()
    security = box["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The writable places imgsrv needs are volumes: data_dir, the metric files, /tmp.
    env = env_of(box)
    writable = {settings.data_dir, env["PROMETHEUS_MULTIPROC_DIR"], "/tmp"}
    assert writable <= mounts(box).keys()
    assert env["IMGSRV_CONFIG"].rpartition("/")[0] in mounts(box)
    assert settings.embedded_redis is False
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    service = only(objects, "Service")["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    assert service["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = only(objects, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@needs_kubectl
def test_resources_are_what_the_worker_count_and_l1_derive_from(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    settings = pod_settings(objects, tmp_path)
    # Derived, not pinned: workers and L1 follow the limits below.
    assert settings.workers == 0 and settings.l1_max_bytes == 0
    assert settings.transform_threads == 0
    resources = container(only(objects, "Deployment", "imgsrv"))["resources"]
    # requests = limits: the CPU quota that the worker count is read from is the one the
    # scheduler reserved, and CPU utilisation means the same against either.
    assert resources["requests"] == resources["limits"]
    cores = parse_quantity(resources["limits"]["cpu"])
    memory = int(parse_quantity(resources["limits"]["memory"]))
    # A fractional quota rounds up to one more worker than there are cores.
    assert cores == int(cores) and cores >= 1
    workers = int(cores)
    assert serving.transform_threads_per_worker(settings, workers, cpus=workers) == 1
    l1_per_worker = memory // 2 // workers
    # Half the memory for L1 leaves each worker at least 256 MiB for decoding and Python.
    assert (memory - workers * l1_per_worker) // workers >= 256 * 2**20
    assert l1_per_worker >= 128 * 2**20


@needs_kubectl
def test_the_worker_pod_serves_metrics_and_stops_in_time(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    deployment, pod, box, settings, port = pod_of(objects, "imgsrv-worker", "metrics", tmp_path)
    assert box["command"][:2] == ["imgsrv", "worker"]
    assert port == settings.worker_metrics_port
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(
        port
    )
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in mounts(box)
    resources = box["resources"]
    assert resources["requests"] == resources["limits"]


@needs_kubectl
def test_the_secret_template_cannot_start_unsigned(objects: list[dict[str, Any]]) -> None:
    secret = only(objects, "Secret")
    data = secret["stringData"]
    assert {"IMGSRV_SIGNING_KEY", "IMGSRV_SIGNING_SALT", "IMGSRV_REDIS_URL"} <= data.keys()
    # An unfilled template is refused at start instead of running in unsigned dev mode.
    with pytest.raises(ValueError):
        bytes.fromhex(data["IMGSRV_SIGNING_KEY"])


# --------------------------------------------------------------------------- KEDA's schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _ScaleTargetRef(_Strict):
    apiVersion: str | None = None
    kind: str | None = None
    name: str
    envSourceContainerName: str | None = None


class _AuthenticationRef(_Strict):
    name: str
    kind: str | None = None


class _Trigger(_Strict):
    type: str
    metadata: dict[str, str]
    name: str | None = None
    metricType: Literal["AverageValue", "Value", "Utilization"] | None = None
    useCachedMetrics: bool | None = None
    authenticationRef: _AuthenticationRef | None = None


class _HorizontalPodAutoscalerConfig(_Strict):
    name: str | None = None
    behavior: dict[str, Any] | None = None

    def model_post_init(self, context: Any) -> None:
        if self.behavior is not None:
            k8s.V2HorizontalPodAutoscalerBehavior.model_validate(self.behavior)


class _Advanced(_Strict):
    horizontalPodAutoscalerConfig: _HorizontalPodAutoscalerConfig | None = None
    restoreToOriginalReplicaCount: bool | None = None
    scalingModifiers: dict[str, Any] | None = None


class _Fallback(_Strict):
    failureThreshold: int
    replicas: int


class _ScaledObjectSpec(_Strict):
    scaleTargetRef: _ScaleTargetRef
    triggers: list[_Trigger] = Field(min_length=1)
    pollingInterval: int | None = None
    cooldownPeriod: int | None = None
    initialCooldownPeriod: int | None = None
    idleReplicaCount: int | None = None
    minReplicaCount: int | None = None
    maxReplicaCount: int | None = None
    advanced: _Advanced | None = None
    fallback: _Fallback | None = None

    def model_post_init(self, context: Any) -> None:
        for trigger in self.triggers:
            if trigger.type == "prometheus":
                _check_prometheus_trigger(trigger.metadata)


# The prometheus scaler's parameters (KEDA docs, scalers/prometheus).
PROMETHEUS_TRIGGER_KEYS = {
    "serverAddress",
    "query",
    "queryParameters",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "unsafeSsl",
    "authModes",
}


def _check_prometheus_trigger(metadata: dict[str, str]) -> None:
    unknown = metadata.keys() - PROMETHEUS_TRIGGER_KEYS
    if unknown:
        raise ValueError(f"unknown prometheus trigger parameters {sorted(unknown)}")
    for key in ("serverAddress", "query", "threshold"):
        if not metadata.get(key):
            raise ValueError(f"the prometheus trigger needs {key}")
    for key in ("threshold", "activationThreshold"):
        if key in metadata:
            float(metadata[key])


class ScaledObject(_Strict):
    apiVersion: Literal["keda.sh/v1alpha1"]
    kind: Literal["ScaledObject"]
    metadata: dict[str, Any]
    spec: _ScaledObjectSpec

    def model_post_init(self, context: Any) -> None:
        k8s.V1ObjectMeta.model_validate(self.metadata)
