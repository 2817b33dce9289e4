"""Locust scenarios of the imgsrv benchmark (FastHttpUser, closed loop: no think time).

``bench/run.py`` drives this file headless; it can also be used on its own::

    BENCH_MISS_TEMPLATES='["/_/w:300/plain/http%3A%2F%2F127.0.0.1%3A8000%2Fv%2F{n}%2Fa.jpg"]' \
    BENCH_HIT_PATHS=hit-paths.txt \
    locust -f bench/locustfile.py --headless -u 32 -t 30s --host http://127.0.0.1:8080 MissUser

User classes (name the one to run on the command line):

* ``MissUser``: every request a new source URL (``{n}`` in a template from
  ``BENCH_MISS_TEMPLATES``, a JSON list, replaced by a unique id): fetch + transform.
* ``CdnUser``: what a CDN sends an origin: like MissUser over several templates, with the
  headers of ``BENCH_HEADERS`` (a browser's ``Accept``); ``BENCH_HEAD_RATIO`` of requests are
  ``HEAD`` of a new URL and ``BENCH_REVALIDATE_RATIO`` repeat a URL this user got before with
  ``If-None-Match`` set to its ETag (expecting 304).
* ``HitUser``: Zipf-distributed over the paths of ``BENCH_HIT_PATHS`` (one per line, most
  popular first), which the runner warms first.
* ``MixedUser``: ``BENCH_HIT_RATIO`` (default 0.9) of requests like HitUser, the rest like
  MissUser.
* ``FairAUser`` / ``FairBUser``: two clients told apart by API key (``Authorization: Bearer``
  with ``BENCH_FAIR_A_KEY`` / ``BENCH_FAIR_B_KEY``). A is ``BENCH_FAIR_A_USERS`` closed-loop
  users (misses in flight all the time); B is ``BENCH_FAIR_B_USERS`` users that each send
  ``BENCH_FAIR_B_RATE`` misses per second. Their requests are named ``a`` and ``b``.
* ``JobUser``: submits ``POST /v1/jobs`` at ``BENCH_JOB_RATE`` jobs/s per user (API key in
  ``BENCH_JOBS_API_KEY``), run together with a sync user class for the ``jobs`` scenario.

Every request is also recorded raw (start time, latency, status, the Retry-After of a 503,
request name, body bytes) and written as JSON to ``BENCH_SAMPLES.<pid>`` when the process
quits, so the runner computes exact percentiles over a window that leaves out the ramp-up.
``BENCH_MAX_REQUESTS`` caps the requests of one locust process (a safety bound on top of
``--run-time``).
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
HEADERS: dict[str, str] = json.loads(os.environ.get("BENCH_HEADERS", "{}"))
HEAD_RATIO = float(os.environ.get("BENCH_HEAD_RATIO", "0.05"))
REVALIDATE_RATIO = float(os.environ.get("BENCH_REVALIDATE_RATIO", "0.05"))
FAIR_A_KEY = os.environ.get("BENCH_FAIR_A_KEY", "")
FAIR_B_KEY = os.environ.get("BENCH_FAIR_B_KEY", "")
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
_samples: list[tuple[float, float, int, float | None, str, int]] = []
# URLs (with their ETags) a CdnUser keeps for revalidation; older ones are replaced.
SEEN_LIMIT = 64
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

    def send(
        self, path: str, name: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> Any:
        """One request; every status is an answer (the runner classifies them all)."""
        _budget()
        with self.client.request(
            method, path, name=name, headers=headers, catch_response=True
        ) as response:
            response.success()
        return response


class MissUser(_BenchUser):
    @task
    def miss(self) -> None:
        self.send(next_miss_path(), "miss", HEADERS or None)


class CdnUser(_BenchUser):
    """New URLs with a browser's Accept, some HEAD, some revalidations of earlier answers."""

    def on_start(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @task
    def cdn(self) -> None:
        draw = random.random()
        if draw < REVALIDATE_RATIO and self.seen:
            path, etag = random.choice(self.seen)
            self.send(path, "revalidate", {**HEADERS, "If-None-Match": etag})
        elif REVALIDATE_RATIO <= draw < REVALIDATE_RATIO + HEAD_RATIO:
            self.send(next_miss_path(), "head", HEADERS, method="HEAD")
        else:
            path = next_miss_path()
            response = self.send(path, "miss", HEADERS)
            tag = response.headers.get("ETag") if response.status_code == 200 else None
            if isinstance(tag, str) and tag:
                if len(self.seen) < SEEN_LIMIT:
                    self.seen.append((path, tag))
                else:
                    self.seen[random.randrange(SEEN_LIMIT)] = (path, tag)


class HitUser(_BenchUser):
    @task
    def hit(self) -> None:
        self.send(next_hit_path(), "hit")


class MixedUser(_BenchUser):
    @task
    def mixed(self) -> None:
        if random.random() < HIT_RATIO:
            self.send(next_hit_path(), "hit")
        else:
            self.send(next_miss_path(), "miss")


class FairAUser(_BenchUser):
    """Client A: closed loop, so it always has its users' misses in flight."""

    fixed_count = int(os.environ.get("BENCH_FAIR_A_USERS", "64"))

    @task
    def miss(self) -> None:
        self.send(next_miss_path(), "a", {"Authorization": f"Bearer {FAIR_A_KEY}"})


FAIR_B_RATE = float(os.environ.get("BENCH_FAIR_B_RATE", "0.5"))


class FairBUser(_BenchUser):
    """Client B: a steady trickle of misses, whatever A does.

    Each user keeps its own schedule, one request per 1/rate seconds from a random phase:
    users spawned together under ``constant_throughput`` stay in step and send bursts (8 at
    once every 2 s), which measures how a burst drains, not how one request waits.
    """

    fixed_count = int(os.environ.get("BENCH_FAIR_B_USERS", "8"))

    def on_start(self) -> None:
        time.sleep(random.uniform(0, 1 / FAIR_B_RATE))
        self.next_at = time.monotonic()

    def wait_time(self) -> float:
        self.next_at += 1 / FAIR_B_RATE
        return max(0.0, self.next_at - time.monotonic())

    @task
    def miss(self) -> None:
        self.send(next_miss_path(), "b", {"Authorization": f"Bearer {FAIR_B_KEY}"})


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
    retry_after: float | None = None
    if status == 503 and response is not None:
        retry_after = _seconds(response.headers.get("Retry-After"))
    started = start_time if start_time is not None else time.time() - response_time / 1000
    _samples.append((started, response_time, status, retry_after, name, int(response_length)))


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (-1 when it is there but not a number), None when absent."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return -1.0


@events.quitting.add_listener
def _write_samples(**_: Any) -> None:
    if SAMPLES and _samples:
        with open(f"{SAMPLES}.{os.getpid()}", "w") as f:
            json.dump(_samples, f)
