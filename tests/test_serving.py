"""Process layout: CPUs from the cgroup, worker and thread counts, gunicorn settings and hooks."""

from __future__ import annotations

import importlib
import logging
import os
import runpy
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.util import load_class
from uvicorn_worker import UvicornWorker

from imgsrv import config, serving
from imgsrv.config import Settings, available_cpus, load_settings

REPO = Path(__file__).resolve().parents[1]
CGROUP_ROOT = "/sys/fs/cgroup"
HOST_CPUS = 8


@pytest.fixture
def fake_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cgroup folder in tmp_path that imgsrv.config reads instead of /sys/fs/cgroup, on a
    host whose CPU affinity mask has HOST_CPUS CPUs."""
    real_path = config.Path

    def redirected(*parts: Any) -> Path:
        path = real_path(*parts)
        if path.is_relative_to(CGROUP_ROOT):
            return tmp_path / path.relative_to(CGROUP_ROOT)
        return path

    monkeypatch.setattr(config, "Path", redirected)
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: set(range(HOST_CPUS)))
    return tmp_path


def write_v1_quota(root: Path, quota_us: int, period_us: int = 100_000) -> None:
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period_us}\n")


# --------------------------------------------------------------------------- CPUs and workers


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("200000 100000", 2),  # 2 CPUs of quota
        ("150000 100000", 2),  # 1.5 CPUs: a partial CPU still gets a worker
        ("50000 100000", 1),  # less than one CPU: never 0
        ("1600000 100000", HOST_CPUS),  # quota above the host: the host's CPUs
        ("max 100000", HOST_CPUS),  # no limit
    ],
)
def test_cgroup_v2_cpu_quota(fake_cgroup: Path, cpu_max: str, expected: int) -> None:
    (fake_cgroup / "cpu.max").write_text(cpu_max + "\n")
    assert available_cpus() == expected


@pytest.mark.parametrize(("quota_us", "expected"), [(300_000, 3), (-1, HOST_CPUS)])
def test_cgroup_v1_cpu_quota(fake_cgroup: Path, quota_us: int, expected: int) -> None:
    write_v1_quota(fake_cgroup, quota_us)
    assert available_cpus() == expected


def test_no_cgroup_files_means_the_affinity_mask(fake_cgroup: Path) -> None:
    assert available_cpus() == HOST_CPUS


def test_worker_count_follows_the_cgroup_quota_unless_set(fake_cgroup: Path) -> None:
    (fake_cgroup / "cpu.max").write_text("300000 100000\n")
    assert Settings(workers=0).worker_count == 3
    assert Settings(workers=5).worker_count == 5


@pytest.mark.parametrize(("workers", "expected"), [(1, 8), (2, 4), (3, 2), (8, 1), (16, 1)])
def test_transform_threads_share_the_cpus_among_workers(workers: int, expected: int) -> None:
    threads = serving.transform_threads_per_worker(Settings(), workers, cpus=8)
    assert threads == expected


def test_configured_transform_threads_are_kept() -> None:
    settings = Settings(transform_threads=3)
    assert serving.transform_threads_per_worker(settings, 4, cpus=8) == 3


def test_transform_threads_use_the_cgroup_quota(fake_cgroup: Path) -> None:
    (fake_cgroup / "cpu.max").write_text("400000 100000\n")
    assert serving.transform_threads_per_worker(Settings(), 2) == 2


def test_worker_environment_makes_the_counts_explicit() -> None:
    env = serving.worker_environment(Settings(), 4, cpus=8)
    assert env == {"IMGSRV_WORKERS": "4", "IMGSRV_TRANSFORM_THREADS": "2"}
    rebuilt = config.load_settings(env)
    assert rebuilt.worker_count == 4
    assert rebuilt.thread_count == 2


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1:8080"),
        ("0.0.0.0", "0.0.0.0:8080"),
        ("::", "[::]:8080"),
        ("[::1]", "[::1]:8080"),
        ("localhost", "localhost:8080"),
    ],
)
def test_bind_address(host: str, expected: str) -> None:
    assert serving.bind_address(host, 8080) == expected


# --------------------------------------------------------------------------- metrics folder


def test_metrics_dir_is_per_port_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), port=9123)
    assert serving.metrics_dir(settings, {}) == tmp_path / "prometheus-multiproc-9123"
    chosen = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "mine")}
    assert serving.metrics_dir(settings, chosen) == tmp_path / "mine"


def test_prepare_metrics_dir_creates_it_and_removes_stale_files(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "metrics"
    serving.prepare_metrics_dir(folder)
    assert folder.is_dir()
    (folder / "counter_123.db").write_bytes(b"old")
    (folder / "keep.txt").write_text("not a metrics file")
    serving.prepare_metrics_dir(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


def test_export_to_workers_sets_counts_and_a_fresh_metrics_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), port=9124, transform_threads=2)
    environ: dict[str, str] = {}
    serving.export_to_workers(settings, 3, environ)
    assert environ["IMGSRV_WORKERS"] == "3"
    assert environ["IMGSRV_TRANSFORM_THREADS"] == "2"
    metrics = Path(environ["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics.is_absolute() and metrics.is_dir()
    assert metrics == (tmp_path / "prometheus-multiproc-9124").resolve()


class FakeWorker:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def test_child_exit_marks_the_worker_dead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("gauge_livesum_4242.db", "gauge_livesum_4343.db", "counter_4242.db"):
        (tmp_path / name).write_bytes(b"")
    serving.child_exit(None, FakeWorker(4242))  # type: ignore[arg-type]
    # Live gauges of the dead worker go; its counters stay (they still count).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_4242.db",
        "gauge_livesum_4343.db",
    ]


def test_child_exit_without_multiprocess_mode_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    serving.child_exit(None, FakeWorker(4242))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- gunicorn config


def load_gunicorn_conf(monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    for name in [n for n in os.environ if n.startswith("IMGSRV_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import imgsrv.gunicorn_conf

    return importlib.reload(imgsrv.gunicorn_conf)


def test_gunicorn_conf_derives_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_gunicorn_conf(
        monkeypatch, IMGSRV_HOST="0.0.0.0", IMGSRV_PORT="9001", IMGSRV_WORKERS="3"
    )
    assert conf.bind == ["0.0.0.0:9001"]
    assert conf.workers == 3
    assert conf.preload_app is False
    assert conf.accesslog is None
    assert conf.wsgi_app == "imgsrv.app:asgi_app()"
    assert conf.graceful_timeout == serving.GRACEFUL_TIMEOUT_SECONDS
    assert conf.keepalive == serving.KEEPALIVE_SECONDS
    assert conf.on_starting is serving.on_starting
    assert conf.child_exit is serving.child_exit


def test_gunicorn_conf_workers_default_to_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_gunicorn_conf(monkeypatch).workers == available_cpus()


def test_gunicorn_accepts_every_value(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_gunicorn_conf(monkeypatch, IMGSRV_WORKERS="2")
    gunicorn_config = GunicornConfig()
    names = [name for name in vars(conf) if name in gunicorn_config.settings]
    for name in names:
        gunicorn_config.set(name, getattr(conf, name))  # validates each value
    assert {"bind", "workers", "worker_class", "preload_app", "child_exit"} <= set(names)
    assert gunicorn_config.workers == 2
    assert gunicorn_config.worker_class is serving.ImgsrvUvicornWorker


def test_worker_class_is_uvicorns_without_its_access_log() -> None:
    worker_class = load_class(serving.WORKER_CLASS)
    assert issubclass(worker_class, UvicornWorker)
    assert worker_class.CONFIG_KWARGS["access_log"] is False


def test_repository_gunicorn_conf_reexports_the_package_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = load_gunicorn_conf(monkeypatch, IMGSRV_PORT="9002")
    values = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    for name in ("bind", "workers", "worker_class", "preload_app", "on_starting", "child_exit"):
        assert values[name] == getattr(conf, name)


# --------------------------------------------------------------------------- logging


def test_logging_config_formats_server_logs_as_json() -> None:
    cfg = serving.logging_config("debug")
    assert cfg["formatters"]["json"]["()"] == "imgsrv.logs.JsonFormatter"
    assert cfg["loggers"]["uvicorn"]["level"] == "DEBUG"
    assert cfg["loggers"]["gunicorn.error"]["handlers"] == ["stderr"]
    assert cfg["loggers"]["uvicorn.access"]["handlers"] == []
    assert "imgsrv" not in cfg["loggers"]


def test_colour_copy_of_uvicorn_messages_is_dropped() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "hi", None, None)
    record.color_message = "\x1b[32mhi\x1b[0m"
    drop: Callable[[logging.LogRecord], bool] = serving.DropColourMessage().filter
    assert drop(record) is True
    assert not hasattr(record, "color_message")


def test_embedded_redis_is_skipped_with_a_redis_url_or_when_switched_off(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    with_url = load_settings({}, redis_url="redis://example:6379/0", data_dir=str(tmp_path))
    assert serving.start_embedded_redis(with_url, environ) is None
    off = load_settings({}, embedded_redis=False, data_dir=str(tmp_path))
    assert serving.start_embedded_redis(off, environ) is None
    assert environ == {}
    assert not (tmp_path / "redis").exists()


def test_without_a_redis_binary_the_server_runs_on_l1_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(serving, "find_redis_server", lambda: None)
    environ: dict[str, str] = {}
    settings = load_settings({}, data_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="imgsrv.serve"):
        assert serving.start_embedded_redis(settings, environ) is None
    assert "IMGSRV_REDIS_URL" not in environ
    assert "in-memory cache only" in caplog.text


def test_embedded_redis_starts_exports_its_url_and_stops(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    settings = load_settings({}, data_dir=str(tmp_path))
    server = serving.start_embedded_redis(settings, environ)
    assert server is not None
    try:
        assert environ["IMGSRV_REDIS_URL"] == f"unix://{tmp_path.resolve()}/redis/redis.sock"
        assert (tmp_path / "redis" / "redis.sock").exists()
    finally:
        server.stop()
    assert not (tmp_path / "redis" / "redis.sock").exists()
