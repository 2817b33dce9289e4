"""Locust scenarios of the imgsrv benchmark (FastHttpUser, closed loop: no think time).

``bench/run.py`` drives this file headless; it can also be used on its own::

    BENCH_MISS_TEMPLATES='["/_/w:300/plain/http%3A%2F%2F127.0.0.1%3A8000%2Fv%2F{n}%2Fa.jpg"]' \
    BENCH_HIT_PATHS=hit-paths.txt \
    locust -f bench/locustfile.py --headless -u 32 -t 30s --host http://127.0.0.1:8080 MissUser

User classes (name the one to run on the command line):

* ``MissUser``: every request a new source URL (``{n}`` in a template from
  ``BENCH_MISS_TEMPLATES``, a JSON list, replaced by a unique id): fetch + transform.
* ``HitUser``: Zipf-distributed over the paths of ``BENCH_HIT_PATHS`` (one per line, most
  popular first), which the runner warms first.
* ``MixedUser``: ``BENCH_HIT_RATIO`` (default 0.9) of requests like HitUser, the rest like
  MissUser.
* ``JobUser``: submits ``POST /v1/jobs`` at ``BENCH_JOB_RATE`` jobs/s per user (API key in
  ``BENCH_JOBS_API_KEY``), run together with a sync user class for the ``jobs`` scenario.

Every request is also recorded raw (start time, latency, status, Retry-After present) and
written as JSON to ``BENCH_SAMPLES.<pid>`` when the process quits, so the runner computes
exact percentiles over a window that leaves out the ramp-up. ``BENCH_MAX_REQUESTS`` caps
the requests of one locust process (a safety bound on top of ``--run-time``).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from typing import Any

from locust import FastHttpUser, constant, constant_throughput, events, task
from locust.exception import StopUser

MISS_TEMPLATES: list[str] = json.loads(os.environ.get("BENCH_MISS_TEMPLATES", "[]"))
HIT_PATHS_FILE = os.environ.get("BENCH_HIT_PATHS", "")
HIT_RATIO = float(os.environ.get("BENCH_HIT_RATIO", "0.9"))
JOB_RATE = float(os.environ.get("BENCH_JOB_RATE", "1"))
JOBS_API_KEY = os.environ.get("BENCH_JOBS_API_KEY", "")
JOB_SOURCE = os.environ.get("BENCH_JOB_SOURCE", "")
SAMPLES = os.environ.get("BENCH_SAMPLES", "")
MAX_REQUESTS = int(os.environ.get("BENCH_MAX_REQUESTS", "0"))
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "30"))
# A unique prefix per run and process, so miss ids never repeat across rounds.
RUN_ID = os.environ.get("BENCH_RUN_ID", "run") + f"-{os.getpid()}"


def _load_hit_paths() -> tuple[list[str], list[float]]:
    if not HIT_PATHS_FILE:
        return [], []
    with open(HIT_PATHS_FILE) as f:
        paths = [line.strip() for line in f if line.strip()]
    # Zipf (s=1) over ranks: rank r is requested with weight 1/r.
    cumulative = list(itertools.accumulate(1.0 / rank for rank in range(1, len(paths) + 1)))
    return paths, cumulative


HIT_PATHS, HIT_CUMULATIVE = _load_hit_paths()
_counter = itertools.count()
_samples: list[tuple[float, float, int, int, str]] = []
_sent = 0


def _budget() -> None:
    """Stop the calling user once this process has sent its request budget."""
    global _sent
    _sent += 1
    if MAX_REQUESTS and _sent > MAX_REQUESTS:
        raise StopUser()


def next_miss_path() -> str:
    template = random.choice(MISS_TEMPLATES)
    return template.format(n=f"{RUN_ID}-{next(_counter)}")


def next_hit_path() -> str:
    return random.choices(HIT_PATHS, cum_weights=HIT_CUMULATIVE, k=1)[0]


class _BenchUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)
    network_timeout = TIMEOUT
    connection_timeout = TIMEOUT

    def get(self, path: str, name: str) -> None:
        _budget()
        with self.client.get(path, name=name, catch_response=True) as response:
            # 503 is an answer, not a client failure: the runner classifies every status.
            response.success()


class MissUser(_BenchUser):
    @task
    def miss(self) -> None:
        self.get(next_miss_path(), "miss")


class HitUser(_BenchUser):
    @task
    def hit(self) -> None:
        self.get(next_hit_path(), "hit")


class MixedUser(_BenchUser):
    @task
    def mixed(self) -> None:
        if random.random() < HIT_RATIO:
            self.get(next_hit_path(), "hit")
        else:
            self.get(next_miss_path(), "miss")


class JobUser(FastHttpUser):
    """Submits one job of three variants per 1/BENCH_JOB_RATE seconds."""

    wait_time = constant_throughput(JOB_RATE)
    network_timeout = TIMEOUT
    connection_timeout = TIMEOUT
    weight = 1
    fixed_count = int(os.environ.get("BENCH_JOB_USERS", "2"))

    @task
    def submit(self) -> None:
        _budget()
        body = {
            "source": JOB_SOURCE.format(n=f"{RUN_ID}-job-{next(_counter)}"),
            "variants": [{"w": 300}, {"w": 600, "f": "webp"}, {"w": 150, "h": 150}],
            "priority": "normal",
        }
        headers = {"Authorization": f"Bearer {JOBS_API_KEY}", "Content-Type": "application/json"}
        with self.client.post(
            "/v1/jobs", data=json.dumps(body), headers=headers, name="job", catch_response=True
        ) as response:
            response.success()


@events.request.add_listener
def _record(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    response: Any = None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **_: Any,
) -> None:
    status = int(getattr(response, "status_code", 0) or 0)
    if exception is not None and status in (0, 200):
        status = 0  # connection error or timeout
    retry_after = 0
    if status == 503 and response is not None and response.headers.get("Retry-After"):
        retry_after = 1
    started = start_time if start_time is not None else time.time() - response_time / 1000
    _samples.append((started, response_time, status, retry_after, name))


@events.quitting.add_listener
def _write_samples(**_: Any) -> None:
    if SAMPLES and _samples:
        with open(f"{SAMPLES}.{os.getpid()}", "w") as f:
            json.dump(_samples, f)
