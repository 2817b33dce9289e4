"""Who runs first, end to end: tenants take turns, priorities share by weight.

Jobs are submitted while no worker runs, then a server with a worker drains the queue; the
order is read back from the jobs' start and finish times (Redis clock). Renders are cheap (a
tiny source, 16 px) so that the queue, not libvips, decides the order.
"""

from __future__ import annotations

import threading
from typing import Any

from starlette.testclient import TestClient

from imgsrv.app import create_app
from tests.job_fixtures import (
    AUTH_A,
    AUTH_B,
    TINY,
    get_job,
    job_settings,
    submit,
    wait_for,
)
from tests.origin import Origin
from tests.servers import RedisProcess


def tiny_job(origin: Origin, index: int, **fields: Any) -> dict[str, Any]:
    return {"source": origin.url(TINY), "variants": [{"w": 16 + index % 40}], **fields}


def jobs_of(api: TestClient, ids: list[str], auth: dict[str, str]) -> list[dict[str, Any]]:
    return [get_job(api, job_id, auth) for job_id in ids]


def test_a_tenant_with_200_jobs_does_not_hold_back_another_tenants_5(
    redis_server: RedisProcess, origin: Origin
) -> None:
    with TestClient(create_app(job_settings(redis_server.url))) as api:
        a_ids = [submit(api, tiny_job(origin, i), AUTH_A) for i in range(200)]
        b_ids = [submit(api, tiny_job(origin, i), AUTH_B) for i in range(5)]
        worker = job_settings(redis_server.url, job_workers=2)
        with TestClient(create_app(worker)):

            def thirty_of_a_done() -> bool:
                listed = api.get("/v1/jobs?status=succeeded&limit=100", headers=AUTH_A).json()
                return len(listed["jobs"]) >= 30

            wait_for(thirty_of_a_done, timeout=30, interval=0.05, what="30 of A's jobs")
            b_jobs = [wait_status_done(api, job_id, AUTH_B) for job_id in b_ids]
        a_done = sorted(
            job["finished_at"] for job in jobs_of(api, a_ids, AUTH_A) if job["finished_at"]
        )
    assert all(job["status"] == "succeeded" for job in b_jobs)
    assert len(a_done) >= 30
    assert max(job["finished_at"] for job in b_jobs) < a_done[29]


def wait_status_done(api: TestClient, job_id: str, auth: dict[str, str]) -> dict[str, Any]:
    return wait_for(
        lambda: (job := get_job(api, job_id, auth))["status"] == "succeeded" and job,
        what=f"job {job_id}",
    )


def test_high_priority_starts_before_an_earlier_backlog_and_low_still_gets_turns(
    redis_server: RedisProcess, origin: Origin
) -> None:
    with TestClient(create_app(job_settings(redis_server.url))) as api:
        ids = [submit(api, tiny_job(origin, i, priority="low")) for i in range(8)]
        ids += [submit(api, tiny_job(origin, i, priority="normal")) for i in range(8)]
        ids += [submit(api, tiny_job(origin, i, priority="high")) for i in range(3)]
        with TestClient(create_app(job_settings(redis_server.url, job_workers=1))):
            jobs = [wait_status_done(api, job_id, AUTH_A) for job_id in ids]
    order = "".join(job["priority"][0] for job in sorted(jobs, key=lambda j: j["started_at"]))
    assert order[:3] == "hhh"
    # The weighted cycles give low a turn after normal's share, not after all of normal.
    assert order == "hhh" + "nnnn" + "l" + "nnnn" + "l" * 7


def test_low_priority_progresses_under_a_steady_stream_of_high(
    redis_server: RedisProcess, origin: Origin
) -> None:
    stop = threading.Event()
    high_ids: list[str] = []
    with TestClient(create_app(job_settings(redis_server.url))) as api:
        high_ids += [submit(api, tiny_job(origin, i, priority="high")) for i in range(40)]
        low_ids = [submit(api, tiny_job(origin, i, priority="low")) for i in range(2)]

        def stream() -> None:
            index = 0
            while not stop.is_set() and index < 400:
                high_ids.append(submit(api, tiny_job(origin, index, priority="high")))
                index += 1

        feeder = threading.Thread(target=stream)
        feeder.start()
        try:
            with TestClient(create_app(job_settings(redis_server.url, job_workers=1))):
                lows = [wait_status_done(api, job_id, AUTH_A) for job_id in low_ids]
        finally:
            stop.set()
            feeder.join()
        highs = jobs_of(api, list(high_ids), AUTH_A)
    for low in lows:
        # High jobs submitted before this low one were still waiting when it started.
        overtaken = [
            h for h in highs
            if h["created_at"] < low["started_at"]
            and (h["started_at"] is None or h["started_at"] > low["started_at"])
        ]  # fmt: skip
        assert len(overtaken) >= 10, low
