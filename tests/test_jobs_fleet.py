"""A fleet of real processes on one real Redis: two `imgsrv serve` instances and one
`imgsrv worker`. The worker registry lists all three and notices the one that dies; cron
schedules fire exactly once however many processes watch them, and once after downtime."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
import redis as redis_sync

from tests.job_fixtures import ADMIN, AUTH_A, TINY, WorkerProcess, wait_for, worker_env
from tests.origin import IMAGES_DIR, Origin, OriginRequestHandler, shared_origin
from tests.servers import ImgsrvProcess, RedisProcess

PREFIX = "{imgsrv:jobs}:v1"
BEAT = 0.5
FLEET_ENV = {
    "IMGSRV_WORKERS": "1",
    "IMGSRV_JOB_WORKERS": "0",  # only the dedicated worker runs jobs
    "IMGSRV_WORKER_HEARTBEAT": str(BEAT),
    "IMGSRV_JOB_LEASE": "1.5",
    "IMGSRV_JOB_HEARTBEAT": "0.3",
    "IMGSRV_RENDER_LOCK_WAIT": "0.3",
    "IMGSRV_LOG_LEVEL": "warning",
}


@dataclass
class Fleet:
    redis: RedisProcess
    store: redis_sync.Redis
    instances: list[ImgsrvProcess]
    worker: WorkerProcess

    def get(self, path: str, instance: int = 0, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.instances[instance].url + path, headers=ADMIN, timeout=10, **kwargs)

    def post(self, path: str, json: Any, instance: int = 0) -> httpx.Response:
        return httpx.post(
            self.instances[instance].url + path, json=json, headers=AUTH_A, timeout=10
        )

    def workers(self, instance: int = 0) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.get("/v1/workers", instance).json()["workers"]
        return found


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    redis = RedisProcess(tmp_path_factory.mktemp("fleet") / "redis").start()
    env = {**worker_env(redis.url), **FLEET_ENV}
    instances = [ImgsrvProcess(env), ImgsrvProcess(env)]
    worker = WorkerProcess(env, ("--concurrency", "1")).start()
    store = redis_sync.Redis.from_url(redis.url)
    try:
        for instance in instances:
            instance.start()
        yield Fleet(redis, store, instances, worker)
    finally:
        worker.stop()
        for instance in instances:
            instance.stop()
        store.close()
        redis.stop()


def test_the_registry_lists_every_process_and_the_metric_counts_them(fleet: Fleet) -> None:
    def all_online() -> list[dict[str, Any]] | None:
        found = [w for w in fleet.workers() if w["state"] == "online"]
        return found if len(found) == 3 else None

    online = wait_for(all_online, timeout=15, interval=0.1, what="three online workers")
    pids = {w["pid"]: w for w in online}
    assert fleet.worker.pid in pids and pids[fleet.worker.pid]["kind"] == "worker"
    assert pids[fleet.worker.pid]["concurrency"] == 1
    servers = [w for w in online if w["kind"] == "server"]
    assert len(servers) == 2 and all(w["concurrency"] == 0 for w in servers)
    assert all(w["version"] and w["host"] and w["heartbeat_age_s"] < 3 * BEAT for w in online)
    assert fleet.workers(1) != [] and {w["id"] for w in fleet.workers(1)} == {
        w["id"] for w in online
    }
    one = fleet.get(f"/v1/workers/{online[0]['id']}")
    assert one.status_code == 200 and one.json()["id"] == online[0]["id"]

    def gauge() -> float | None:
        for line in fleet.get("/metrics").text.splitlines():
            if line.startswith("imgsrv_workers_online "):
                return float(line.split()[1])
        return None

    assert wait_for(lambda: gauge() == 3.0, timeout=10, what="imgsrv_workers_online 3")


def _force_due(fleet: Fleet, schedule_id: str, at_ms: int) -> None:
    """Move a schedule's next run to ``at_ms`` (in the past: due now), as time passing would."""
    key = f"{PREFIX}:schedule:{schedule_id}"
    fleet.store.hset(key, "next_run", str(at_ms))
    fleet.store.zadd(f"{PREFIX}:schedules", {schedule_id: at_ms})


def _redis_ms(fleet: Fleet) -> int:
    seconds, micros = fleet.store.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _schedule(fleet: Fleet, schedule_id: str) -> dict[str, Any]:
    body: dict[str, Any] = fleet.get(f"/v1/schedules/{schedule_id}", instance=1).json()
    return body


def test_a_due_schedule_fires_exactly_once_across_the_fleet(fleet: Fleet) -> None:
    job = {"source": shared_origin().url(TINY), "variants": [{"w": 12}]}
    created = fleet.post("/v1/schedules", {"cron": "0 0 1 1 *", "job": job})
    assert created.status_code == 201, created.text
    schedule_id = created.json()["id"]
    fired_jobs = []
    for round_number in range(1, 6):
        _force_due(fleet, schedule_id, _redis_ms(fleet) - 1000)
        fired = wait_for(
            lambda n=round_number: _schedule(fleet, schedule_id)["fired"] >= n or None,
            timeout=10, interval=0.05, what=f"firing {round_number}",
        )  # fmt: skip
        assert fired
        # Three processes look every second: give the others time to fire it again if they could.
        time.sleep(1.3)
        state = _schedule(fleet, schedule_id)
        assert state["fired"] == round_number
        fired_jobs.append(state["last_job"])
        assert state["next_run"].startswith(f"{time.gmtime().tm_year + 1}-01-01T00:00")
    assert len(set(fired_jobs)) == 5
    made = [
        j for j in fleet.get("/v1/jobs?limit=100").json()["jobs"] if j["schedule"] == schedule_id
    ]
    assert sorted(j["id"] for j in made) == sorted(fired_jobs)
    assert all(j["source"] == job["source"] and j["tenant"] == "tenant-a" for j in made)


def test_after_downtime_a_schedule_fires_once_not_once_per_missed_period(fleet: Fleet) -> None:
    job = {"source": shared_origin().url(TINY), "variants": [{"w": 14}]}
    schedule_id = fleet.post("/v1/schedules", {"cron": "*/30 * * * *", "job": job}).json()["id"]
    now = _redis_ms(fleet)
    _force_due(fleet, schedule_id, now - 6 * 3_600_000)  # twelve runs missed
    wait_for(lambda: _schedule(fleet, schedule_id)["fired"] >= 1, timeout=10, what="the firing")
    time.sleep(1.3)
    state = _schedule(fleet, schedule_id)
    assert state["fired"] == 1
    next_run = datetime.fromisoformat(state["next_run"]).timestamp()
    assert now / 1000 < next_run <= now / 1000 + 30 * 60 + 1
    fleet.get(f"/v1/schedules/{schedule_id}")  # still there
    assert (
        httpx.delete(
            fleet.instances[0].url + f"/v1/schedules/{schedule_id}", headers=AUTH_A
        ).status_code
        == 200
    )


def test_a_killed_worker_is_shown_offline_and_its_job_is_taken_back(
    fleet: Fleet, origin: Origin
) -> None:
    image = (IMAGES_DIR / TINY.removeprefix("files/")).read_bytes()

    def slow(handler: OriginRequestHandler) -> None:
        time.sleep(3.0)
        handler.send_body(200, image, {"Content-Type": "image/jpeg"})

    origin.handler("slow/fleet.jpg", slow)
    job_id = fleet.post(
        "/v1/jobs", {"source": origin.url("slow/fleet.jpg"), "variants": [{"w": 8}]}
    ).json()["id"]

    def running_on_worker() -> dict[str, Any] | None:
        mine = [w for w in fleet.workers() if w["pid"] == fleet.worker.pid]
        return mine[0] if mine and job_id in mine[0]["current_jobs"] else None

    record = wait_for(running_on_worker, timeout=10, interval=0.1, what="the job on the worker")
    assert fleet.worker.process is not None
    fleet.worker.process.send_signal(signal.SIGKILL)
    fleet.worker.process.wait()

    def offline() -> dict[str, Any] | None:
        found = {w["id"]: w for w in fleet.workers(1)}
        return found[record["id"]] if found[record["id"]]["state"] == "offline" else None

    gone = wait_for(offline, timeout=10, interval=0.1, what="the worker shown offline")
    assert gone["heartbeat_age_s"] > 3 * BEAT and gone["online"] is False

    # Its lease runs out and the instances (which run no jobs themselves) reap it.
    def requeued() -> dict[str, Any] | None:
        job: dict[str, Any] = fleet.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] == "queued" else None

    job = wait_for(requeued, timeout=15, interval=0.1, what="the job taken back")
    started = next(e for e in job["timeline"] if e["event"] == "started")
    assert started["worker"] == f"{record['id']}:0"  # the registry id and the slot
    assert job["attempts"] == 1 and "lease expired" in [e["event"] for e in job["timeline"]]
    with WorkerProcess(fleet.worker.env, ("--concurrency", "1")):
        wait_for(
            lambda: fleet.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded",
            timeout=20, interval=0.1, what="another worker to finish the job",
        )  # fmt: skip


def test_every_key_of_the_job_system_is_in_the_queues_hash_slot(fleet: Fleet) -> None:
    # After jobs, schedules, registry records, dependencies, timelines and pauses were written
    # by real processes: Redis Cluster must be able to run every script on one shard.
    from redis.crc import key_slot

    httpx.post(fleet.instances[0].url + "/v1/queues/low/pause", headers=ADMIN, timeout=10)
    httpx.post(fleet.instances[0].url + "/v1/queues/low/resume", headers=ADMIN, timeout=10)
    keys = [key for key in fleet.store.scan_iter() if b":v1:{" not in key]  # L2 keys aside
    kinds = {key.split(b":")[3] for key in keys}
    assert {b"job", b"timeline", b"workers", b"worker", b"schedules", b"schedule"} <= kinds
    assert {key_slot(key) for key in keys} == {key_slot(PREFIX.encode())}
