"""A Redis master SIGKILLed under load: Sentinel, and Cluster (the queue's master, an L2 master).

One ``imgsrv serve`` process with its own job workers, image requests from four threads and job
submissions from one, and a backlog of jobs queued before the kill. While the master is gone
and until a replica is promoted: every image request answers 200 (L1 and rendering, the L2
breaker open); job submissions answer 503 with Retry-After, never another error. After the
promotion imgsrv uses the new master without a restart. Every job answered 202, before or
after the kill, finishes: accepted jobs waited for a replica (WAIT), so none is lost.

Each test prints its numbers (``FAILOVER ...``): 5xx answers, lost jobs, time from the kill to
the promotion and to the first accepted job.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from imgsrv.cache.l2 import L2Cache
from tests.fleet import (
    LOCAL_TINY,
    image_requests,
    instance_env,
    job_body,
    job_requests,
    wait_all_finished,
)
from tests.job_fixtures import AUTH_A, wait_for
from tests.load import Load, Outcome, summary
from tests.redis_topologies import ClusterDeployment, RedisNode, SentinelDeployment
from tests.servers import ImgsrvProcess

OTHER_IMAGES = tuple(f"orientation/Landscape_{n}.jpg" for n in range(2, 9))


def accepted_ids(outcomes: list[Outcome]) -> list[str]:
    return [o.body["id"] for o in outcomes if o.status == 202]


@dataclass
class Failover:
    """What one failover under load measured."""

    images: dict[str, int]
    submissions: dict[str, int]
    promoted_after: float
    first_accept_after: float | None  # the end of the refusals, from the kill
    accepted: int
    lost: int
    bad_503: int  # 503s without Retry-After


def run_failover(
    server: ImgsrvProcess,
    kill: Callable[[], RedisNode],
    wait_promoted: Callable[[RedisNode], float],
    image_path: str = LOCAL_TINY,
) -> Failover:
    """Queue a backlog, start the load, kill, wait for the promotion, measure, check jobs."""
    with httpx.Client(base_url=server.url, headers=AUTH_A, timeout=10) as http:
        backlog = [http.post("/v1/jobs", json=job_body(n)) for n in range(24)]
    assert all(b.status_code == 202 for b in backlog), [b.text for b in backlog][:2]
    images = Load(server.url, image_requests(image_path), threads=4, max_requests=20_000)
    jobs = Load(server.url, job_requests, threads=1, pause=0.05, headers=AUTH_A, max_requests=500)
    with images, jobs:
        time.sleep(1.0)
        killed_at = time.monotonic()
        old = kill()
        promoted_after = wait_promoted(old)
        # Recovered: jobs are accepted again on the new master, by the same process.
        wait_for(
            lambda: any(o.status == 202 for o in jobs.between(killed_at + promoted_after)),
            20,
            what="a job accepted after the promotion",
        )
        time.sleep(1.0)
    after_kill = jobs.between(killed_at)
    refused = [o.at for o in after_kill if o.status != 202]
    # Recovered: the first acceptance after the last refusal (at once if none was refused).
    first_accept = next(
        (
            o.at - killed_at
            for o in after_kill
            if o.status == 202 and o.at > max(refused, default=0)
        ),
        None,
    )
    ids = [b.json()["id"] for b in backlog] + accepted_ids(jobs.outcomes)
    jobs_found = wait_all_finished(server.url, ids, timeout=90)
    return Failover(
        images=summary(images.outcomes),
        submissions=summary(jobs.outcomes),
        promoted_after=promoted_after,
        first_accept_after=first_accept,
        accepted=len(ids),
        lost=sum(1 for job in jobs_found.values() if job["status"] != "succeeded"),
        bad_503=sum(1 for o in jobs.outcomes if o.status == 503 and o.retry_after != "1"),
    )


def check(result: Failover, name: str, jobs_may_pause: bool = True) -> None:
    print(  # the numbers of the run, for the record
        f"\nFAILOVER {name}: images {result.images}, submissions {result.submissions}, "
        f"promoted after {result.promoted_after:.2f} s, jobs accepted again "
        f"{result.first_accept_after:.2f} s after the kill, {result.accepted} accepted jobs, "
        f"{result.lost} lost"
        if result.first_accept_after is not None
        else f"\nFAILOVER {name}: {result}"
    )
    assert set(result.images) == {"200"}, result.images  # 0 5xx, 0 connection errors
    allowed = {"202", "503"} if jobs_may_pause else {"202"}
    assert set(result.submissions) <= allowed, result.submissions  # never a 500
    assert result.bad_503 == 0
    assert result.lost == 0
    assert result.images["200"] > 50


@pytest.fixture
def prefix() -> str:
    return f"f{secrets.token_hex(4)}"


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


def start_server(redis_url: str, prefix: str, log: Path, **extra: str) -> ImgsrvProcess:
    env = instance_env(redis_url, prefix, IMGSRV_JOB_WORKERS="2", **extra)
    return ImgsrvProcess(env, ("--workers", "1"), log=log).start(60)


def test_sentinel_master_killed_under_load(
    sentinel_deployment: SentinelDeployment, prefix: str, log_dir: Path
) -> None:
    server = start_server(sentinel_deployment.url, prefix, log_dir / "imgsrv.log")
    try:

        def promoted(old: RedisNode) -> float:
            return sentinel_deployment.wait_promoted(old)[1]

        result = run_failover(server, sentinel_deployment.kill_master, promoted)
        check(result, "sentinel master")
        assert result.submissions.get("503", 0) > 0  # the gap was seen, and answered 503
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["redis"] == "up"
    finally:
        server.stop()
        sentinel_deployment.restore()


@pytest.fixture
def cluster_server(
    cluster_deployment: ClusterDeployment, prefix: str, log_dir: Path
) -> Iterator[ImgsrvProcess]:
    server = start_server(cluster_deployment.url, prefix, log_dir / "imgsrv.log")
    yield server
    server.stop()
    cluster_deployment.restore()


def queue_key(prefix: str) -> str:
    return f"{{{prefix}:jobs}}:v1:depth"


def test_cluster_master_of_the_job_queue_killed_under_load(
    cluster_deployment: ClusterDeployment, cluster_server: ImgsrvProcess, prefix: str
) -> None:
    key = queue_key(prefix)

    def kill() -> RedisNode:
        master = cluster_deployment.master_of(key)
        cluster_deployment.kill(master)
        return master

    def promoted(old: RedisNode) -> float:
        return cluster_deployment.wait_promoted(key, old)[1]

    result = run_failover(cluster_server, kill, promoted)
    check(result, "cluster, the job queue's master")


def test_cluster_master_of_l2_entries_killed_under_load(
    cluster_deployment: ClusterDeployment, cluster_server: ImgsrvProcess, prefix: str
) -> None:
    queue_master = cluster_deployment.master_of(queue_key(prefix))
    naming = L2Cache(redis_sync.Redis(), prefix=prefix)  # only for key names
    # A source of the load whose L2 entries live on another master than the queue's (the
    # hash tag is per source).
    path, victim = next(
        (path, master)
        for path in (LOCAL_TINY, *OTHER_IMAGES)
        if (master := cluster_deployment.master_of(naming.source_key(f"local://{path}")))
        is not queue_master
    )

    def kill() -> RedisNode:
        cluster_deployment.kill(victim)
        return victim

    def promoted(old: RedisNode) -> float:
        return cluster_deployment.wait_promoted(naming.source_key(f"local://{path}"), old)[1]

    result = run_failover(cluster_server, kill, promoted, image_path=path)
    # The queue's master never went away, and with cluster-require-full-coverage off the
    # other shards keep serving while one fails over: no submission is refused.
    check(result, "cluster, an L2 master", jobs_may_pause=False)


def submission_seconds(url: str, env: Mapping[str, str], log: Path, count: int = 40) -> list[float]:
    server = ImgsrvProcess(env, ("--workers", "1"), log=log).start(60)
    try:
        times = []
        with httpx.Client(base_url=server.url, headers=AUTH_A, timeout=10) as http:
            for number in range(count + 5):
                started = time.perf_counter()
                answer = http.post("/v1/jobs", json=job_body(number))
                elapsed = time.perf_counter() - started
                assert answer.status_code == 202, answer.text
                if number >= 5:  # the first few warm connections and scripts up
                    times.append(elapsed)
        return sorted(times)
    finally:
        server.stop()


def test_cost_of_waiting_for_a_replica(
    sentinel_deployment: SentinelDeployment, log_dir: Path
) -> None:
    """Submission latency through HTTP with and without WAIT; prints the medians."""
    results = {}
    for replicas in ("0", "1"):
        env = instance_env(
            sentinel_deployment.url,
            f"w{secrets.token_hex(4)}",
            IMGSRV_JOB_WORKERS="0",
            IMGSRV_JOB_ACCEPT_REPLICAS=replicas,
        )
        results[replicas] = submission_seconds(
            sentinel_deployment.url, env, log_dir / f"wait-{replicas}.log"
        )
    without, with_wait = results["0"], results["1"]
    median = len(without) // 2
    p90 = len(without) * 9 // 10
    print(  # the numbers of the run, for the record
        f"\nWAIT cost (Sentinel, 1 replica, {len(without)} submissions each): median "
        f"{without[median] * 1000:.2f} -> {with_wait[median] * 1000:.2f} ms, p90 "
        f"{without[p90] * 1000:.2f} -> {with_wait[p90] * 1000:.2f} ms"
    )
