"""What the job tests share: settings, a Redis per test, API calls, waiting, worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
import pytest
from starlette.testclient import TestClient

from imgsrv.config import Settings, load_settings
from tests.servers import stop_process

T = TypeVar("T")

TENANT_A, KEY_A = "tenant-a", "key-a-0123456789"
TENANT_B, KEY_B = "tenant-b", "key-b-0123456789"
API_KEYS = f"{TENANT_A}:{KEY_A},{TENANT_B}:{KEY_B}"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
ADMIN_KEY = "admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

TINY = "files/jpeg/baseline-tiny-nometa.jpg"
PHOTO = "files/orientation/Landscape_1.jpg"  # 1800x1200

# Short enough for tests to watch retries, leases and polls happen within a second or two.
FAST_JOBS: dict[str, object] = {
    "job_backoff": 0.05,
    "job_lease": 2.0,
    "job_heartbeat": 0.3,
    "job_poll_interval": 0.05,
    "job_callback_timeout": 2.0,
}


def job_settings(redis_url: str, **overrides: object) -> Settings:
    """Settings for job tests: the given Redis, 127.0.0.1 origins allowed, fast job timing."""
    values: dict[str, object] = {
        "redis_url": redis_url,
        "allow_source_networks": ("127.0.0.0/8",),
        "access_log": False,
        "log_level": "warning",
        "api_keys": tuple(API_KEYS.split(",")),
        "admin_key": ADMIN_KEY,
        "job_workers": 0,
        **FAST_JOBS,
    }
    values.update(overrides)
    return load_settings({}, **values)


def submit(client: TestClient, body: Mapping[str, Any], auth: Mapping[str, str] = AUTH_A) -> str:
    """Submit a job that must be accepted; returns its id."""
    response = client.post("/v1/jobs", json=dict(body), headers=dict(auth))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def get_job(client: TestClient, job_id: str, auth: Mapping[str, str] = AUTH_A) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=dict(auth))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for(
    probe: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or probe}")
        time.sleep(interval)


def wait_status(
    client: TestClient,
    job_id: str,
    statuses: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"}),
    timeout: float = 15.0,
    auth: Mapping[str, str] = AUTH_A,
) -> dict[str, Any]:
    """Poll the job until its status is one of ``statuses``; returns the job."""

    def probe() -> dict[str, Any] | None:
        job = get_job(client, job_id, auth)
        return job if job["status"] in statuses else None

    return wait_for(probe, timeout, what=f"job {job_id} to reach {sorted(statuses)}")


class WorkerProcess:
    """``imgsrv worker`` as a child process."""

    def __init__(self, env: Mapping[str, str], args: tuple[str, ...] = ()) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMGSRV_")},
            "IMGSRV_LOG_LEVEL": "warning",
            **env,
        }
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imgsrv.cli", "worker", *self.args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL, like a crash: no graceful release of leases."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        return stop_process(self.process, timeout)

    def stderr(self) -> str:
        assert self.process is not None and self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")

    def __enter__(self) -> WorkerProcess:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Environment of an ``imgsrv worker`` matching :func:`job_settings`."""
    env = {
        "IMGSRV_REDIS_URL": redis_url,
        "IMGSRV_ALLOW_SOURCE_NETWORKS": "127.0.0.0/8",
        "IMGSRV_API_KEYS": API_KEYS,
        "IMGSRV_ADMIN_KEY": ADMIN_KEY,
        **{f"IMGSRV_{name.upper()}": str(value) for name, value in FAST_JOBS.items()},
    }
    env.update(extra)
    return env


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
