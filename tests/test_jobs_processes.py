"""Jobs across real processes: a worker killed mid-job, Redis killed and restarted."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path

import redis as redis_sync
from starlette.testclient import TestClient

from imgsrv.app import create_app
from tests.job_fixtures import (
    AUTH_A,
    TINY,
    WorkerProcess,
    get_job,
    job_settings,
    submit,
    wait_for,
    wait_status,
    worker_env,
)
from tests.origin import IMAGES_DIR, Origin, OriginRequestHandler
from tests.servers import RedisProcess

LEASE = {
    "IMGSRV_JOB_LEASE": "1.0",
    "IMGSRV_JOB_HEARTBEAT": "0.2",
    # A killed worker leaves its cross-process render lock behind; the next renderer of that
    # image waits this long for a result that will never come, then renders itself.
    "IMGSRV_RENDER_LOCK_WAIT": "0.3",
}


def worker_pid(store: redis_sync.Redis, job_id: str) -> int:
    """The process id in the job's lease holder ("host:pid:slot"), read from its record."""
    holder = store.hget(f"{{imgsrv:jobs}}:v1:job:{job_id}", "worker")
    assert isinstance(holder, bytes)
    return int(holder.decode().split(":")[1])


def test_a_job_whose_worker_is_killed_finishes_on_another_worker(
    redis_server: RedisProcess, origin: Origin
) -> None:
    arrivals: list[float] = []
    image = (IMAGES_DIR / TINY.removeprefix("files/")).read_bytes()
    lock = threading.Lock()

    def slow(handler: OriginRequestHandler) -> None:
        with lock:
            arrivals.append(time.time())
        time.sleep(2.0)  # long enough to kill the worker in the middle of the download
        handler.send_body(200, image, {"Content-Type": "image/jpeg"})

    origin.handler("slow/crash.jpg", slow)
    env = worker_env(redis_server.url, **LEASE)
    first = WorkerProcess(env, ("--concurrency", "1")).start()
    second = WorkerProcess(env, ("--concurrency", "1")).start()
    workers = {first.pid: first, second.pid: second}
    store = redis_sync.Redis.from_url(redis_server.url)
    try:
        with TestClient(create_app(job_settings(redis_server.url))) as api:
            body = {"source": origin.url("slow/crash.jpg"), "variants": [{"w": 10}, {"w": 20}]}
            job_id = submit(api, body)
            wait_for(lambda: arrivals, what="the first download to start")
            holder = worker_pid(store, job_id)
            # Longer than a lease: only heartbeats keep the other worker from taking the job.
            time.sleep(1.3)
            running = get_job(api, job_id)
            assert running["status"] == "running" and running["attempts"] == 1
            assert worker_pid(store, job_id) == holder
            workers[holder].kill()
            killed_at = time.time()
            job = wait_status(api, job_id, timeout=20)
        survivor = next(pid for pid in workers if pid != holder)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2
        assert job["progress"] == {"done": 2, "total": 2}
        assert worker_pid(store, job_id) == survivor
        # Nothing ran twice at once: the second attempt began after the first worker died.
        assert datetime.fromisoformat(job["started_at"]).timestamp() > killed_at - 0.01
        assert len(arrivals) >= 2 and all(t > killed_at for t in arrivals[1:])
        assert workers[holder].stop() == -9  # it was killed: nothing left to stop
    finally:
        for worker in workers.values():
            worker.stop()
        store.close()
    assert workers[survivor].stop() == 0  # the graceful stop on SIGTERM exited 0


def test_no_accepted_job_is_lost_when_redis_is_killed_and_restarted(
    tmp_path: Path, origin: Origin
) -> None:
    image = (IMAGES_DIR / TINY.removeprefix("files/")).read_bytes()

    def slow(handler: OriginRequestHandler) -> None:
        time.sleep(0.25)
        handler.send_body(200, image, {"Content-Type": "image/jpeg"})

    sources = [f"slow/restart-{i}.jpg" for i in range(20)]
    for path in sources:
        origin.handler(path, slow)
    redis = RedisProcess(tmp_path / "redis").start()
    worker = WorkerProcess(worker_env(redis.url, **LEASE), ("--concurrency", "2")).start()
    try:
        with TestClient(create_app(job_settings(redis.url))) as api:
            ids = [
                submit(api, {"source": origin.url(path), "variants": [{"w": 8}, {"w": 12}]})
                for path in sources
            ]
            accepted = time.monotonic()
            wait_for(lambda: origin.total() >= 2, what="the worker to start jobs")
            # appendfsync everysec: a write is on disk at most about a second after it was
            # acknowledged; a crash inside that second may lose it, as Redis documents.
            time.sleep(max(0.0, accepted + 1.1 - time.monotonic()))
            redis.kill()
            started = sum(origin.count(path) > 0 for path in sources)
            assert 0 < started < 15  # jobs were running, and most still queued, at the crash
            refused = api.post(
                "/v1/jobs",
                json={"source": origin.url(sources[0]), "variants": [{"w": 9}]},
                headers=AUTH_A,
            )
            assert refused.status_code == 503  # not accepted, so nothing to lose
            time.sleep(0.5)
            redis.start()
            jobs = [wait_status(api, job_id, timeout=40) for job_id in ids]
        assert [job["status"] for job in jobs] == ["succeeded"] * 20
        assert all(job["progress"] == {"done": 2, "total": 2} for job in jobs)
    finally:
        status = worker.stop()
        redis.stop()
    assert status == 0  # the worker rode out the outage and stopped gracefully


def test_the_worker_command_needs_redis(tmp_path: Path) -> None:
    with WorkerProcess({"IMGSRV_DATA_DIR": str(tmp_path)}) as worker:
        assert worker.process is not None and worker.process.wait(30) == 2
        assert "IMGSRV_REDIS_URL" in worker.stderr()


def test_a_stopped_worker_hands_its_job_back(redis_server: RedisProcess, origin: Origin) -> None:
    image = (IMAGES_DIR / TINY.removeprefix("files/")).read_bytes()

    def slow(handler: OriginRequestHandler) -> None:
        time.sleep(0.7)
        handler.send_body(200, image, {"Content-Type": "image/jpeg"})

    origin.handler("slow/release.jpg", slow)
    env = worker_env(redis_server.url, IMGSRV_SOURCE_CACHE_TTL="0")
    worker = WorkerProcess(env, ("--concurrency", "1")).start()
    with worker, TestClient(create_app(job_settings(redis_server.url))) as api:
        variants = [{"w": w} for w in (10, 20, 30, 40)]
        job_id = submit(api, {"source": origin.url("slow/release.jpg"), "variants": variants})
        wait_for(lambda: origin.count("slow/release.jpg") >= 1, what="the job to start")
        # Dedicated workers yield the CPU to image requests served on the same machine.
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == min(19, os.nice(0) + 10)
        assert worker.stop() == 0  # SIGTERM: finishes the variant in hand, then releases
        job = get_job(api, job_id)
        assert job["status"] == "queued" and job["attempts"] == 0
        assert 1 <= job["progress"]["done"] < 4
        assert origin.count("slow/release.jpg") == job["progress"]["done"]
        # Another worker finishes it and renders only the variants not done yet.
        finishing = job_settings(redis_server.url, job_workers=1, source_cache_ttl=0.0)
        with TestClient(create_app(finishing)):
            finished = wait_status(api, job_id)
    assert finished["status"] == "succeeded" and finished["attempts"] == 1
    assert origin.count("slow/release.jpg") == 2  # one more download, for the three left
    assert [event["event"] for event in finished["timeline"]] == [
        "submitted", "started", "released", "started", "succeeded",
    ]  # fmt: skip
