"""Several imgsrv instances and job workers on one Redis, behind HAProxy, for failure tests.

:func:`instance_env` is the environment every instance and worker of a test shares (one
Redis, one key prefix, the corpus as local:// sources, fast job timing). :class:`Fleet` runs
N ``imgsrv serve`` instances (own process groups, so that one can be SIGKILLed whole), M
``imgsrv worker`` processes and HAProxy with ``deploy/haproxy.cfg`` rewritten for 127.0.0.1
by :func:`deploy.demo.haproxy_config`. Every process logs to a file of the test's folder.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from deploy.demo import HAPROXY_CFG, haproxy_config
from tests.corpus import IMAGES
from tests.job_fixtures import API_KEYS, AUTH_A, FAST_JOBS, PHOTO, TINY, wait_for
from tests.servers import ImgsrvProcess, free_port, stop_process

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# Corpus paths as local:// sources (the origin's /files/ prefix dropped).
LOCAL_TINY = TINY.removeprefix("files/")
LOCAL_PHOTO = PHOTO.removeprefix("files/")


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
    )


def instance_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment of an ``imgsrv serve`` or ``imgsrv worker`` of these tests."""
    env = {
        "IMGSRV_REDIS_URL": redis_url,
        "IMGSRV_REDIS_PREFIX": prefix,
        "IMGSRV_LOCAL_ROOT": str(IMAGES),
        "IMGSRV_ALLOW_SOURCE_NETWORKS": "127.0.0.0/8",
        "IMGSRV_API_KEYS": API_KEYS,
        "IMGSRV_LOG_LEVEL": "warning",
        "IMGSRV_ACCESS_LOG": "0",
        "IMGSRV_REDIS_BREAKER_RESET": "0.5",
        "IMGSRV_JOB_MAX_ATTEMPTS": "5",
        **{f"IMGSRV_{name.upper()}": str(value) for name, value in FAST_JOBS.items()},
    }
    env.update(extra)
    return env


def job_body(number: int, variants: int = 2, key: str = "") -> dict[str, Any]:
    """A job of ``variants`` renders of the photo (different widths: no cache hits)."""
    body: dict[str, Any] = {
        "source": f"local://{LOCAL_PHOTO}",
        "variants": [{"w": 40 + (number * 37 + v) % 900} for v in range(variants)],
    }
    if key:
        body["idempotency_key"] = key
    return body


def image_requests(path: str = LOCAL_TINY) -> Callable[[int, int], tuple[str, str, None]]:
    """Requests for a :class:`tests.load.Load`: GETs of one local source, a mix of repeats
    (cache hits) and new widths (renders), like a CDN's misses."""

    def request(thread: int, number: int) -> tuple[str, str, None]:
        width = 16 + number % 30 if number % 3 else 50 + (thread * 997 + number) % 1500
        return "GET", f"/_/w:{width}/plain/local://{path}", None

    return request


def job_requests(thread: int, number: int) -> tuple[str, str, dict[str, Any]]:
    """Requests for a :class:`tests.load.Load`: job submissions of two variants each."""
    return "POST", "/v1/jobs", job_body(number, 2, key=f"{thread}-{number}-{secrets.token_hex(3)}")


def wait_all_finished(base_url: str, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll until every job is finished; returns id -> job (``{"status": "missing"}`` for 404)."""
    jobs: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=base_url, timeout=10, headers=AUTH_A) as http:

        def all_done() -> bool:
            for job_id in ids:
                if jobs.get(job_id, {}).get("status") in TERMINAL:
                    continue
                answer = http.get(f"/v1/jobs/{job_id}")
                if answer.status_code == 404:
                    jobs[job_id] = {"status": "missing"}
                elif answer.status_code == 200:
                    jobs[job_id] = answer.json()
                if jobs.get(job_id, {}).get("status") not in TERMINAL:
                    return False
            return True

        wait_for(all_done, timeout, interval=0.2, what="every accepted job to finish")
    return jobs


class Fleet:
    """N instances and M workers on one Redis behind HAProxy, all on 127.0.0.1."""

    def __init__(
        self,
        folder: Path,
        env: dict[str, str],
        instances: int = 3,
        workers_per_instance: int = 2,
        job_workers: int = 2,
    ) -> None:
        self.folder = folder
        self.env = env
        self.instances = [
            ImgsrvProcess(
                env,
                ("--workers", str(workers_per_instance)),
                cwd=folder,
                log=folder / f"imgsrv{n}.log",
                own_group=True,
            )
            for n in range(instances)
        ]
        self.job_workers = job_workers
        self.workers: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.stats_port = free_port()
        self.balancer: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Fleet:
        for instance in self.instances:
            instance.launch()
        for number in range(self.job_workers):
            self.workers.append(self._spawn(f"worker{number}", ["worker", "--concurrency", "1"]))
        for instance in self.instances:
            instance.wait_ready(90)
        binary = haproxy_binary()
        assert binary is not None
        config = self.folder / "haproxy.cfg"
        servers = [f"127.0.0.1:{instance.port}" for instance in self.instances]
        config.write_text(
            haproxy_config(
                HAPROXY_CFG.read_text(),
                f"127.0.0.1:{self.port}",
                servers,
                stats_bind=f"127.0.0.1:{self.stats_port}",
            )
        )
        with (self.folder / "haproxy.log").open("ab") as log:
            self.balancer = subprocess.Popen(
                [binary, "-f", str(config), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_for(
            lambda: self.servers_up() == len(self.instances),
            30,
            interval=0.1,
            what="HAProxy to see every instance up",
        )
        return self

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSRV_")} | self.env
        with (self.folder / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "imgsrv.cli", *args],
                env=env,
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def server_states(self) -> dict[str, str]:
        """HAProxy's view of each instance (``UP``, ``DOWN``, ``UP 1/2``...), by port."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=2).text
        except httpx.HTTPError:
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        ports = {f"imgsrv{n}": i.port for n, i in enumerate(self.instances, 1)}
        return {
            str(ports[row["svname"]]): row["status"]
            for row in rows
            if row["pxname"] == "imgsrv" and row["svname"] in ports
        }

    def servers_up(self) -> int:
        return sum(1 for state in self.server_states().values() if state == "UP")

    def stop(self) -> None:
        stop_process(self.balancer, 10)
        for worker in self.workers:
            stop_process(worker, 30)
        for instance in self.instances:
            if instance.process is not None and instance.process.poll() is None:
                instance.stop(30)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def running_jobs(self) -> int:
        answer = httpx.get(
            self.url + "/v1/jobs", params={"status": "running"}, headers=AUTH_A, timeout=10
        )
        return len(answer.json()["jobs"]) if answer.status_code == 200 else 0


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int:
    """The exit status, within ``timeout`` seconds."""
    started = time.monotonic()
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {time.monotonic() - started:.1f} s") from None
