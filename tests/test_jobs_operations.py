"""Operating jobs over HTTP against a real Redis: admin access, queues, pause, re-prioritise,
dead letters and retry, dependencies, cron schedules, and bad input that changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
from starlette.testclient import TestClient

from imgsrv.app import create_app
from imgsrv.config import load_settings
from tests.job_fixtures import (
    ADMIN,
    AUTH_A,
    AUTH_B,
    TENANT_A,
    TENANT_B,
    TINY,
    get_job,
    job_settings,
    submit,
    wait_status,
)
from tests.origin import Origin, shared_origin
from tests.servers import RedisProcess

PREFIX = "{imgsrv:jobs}:v1"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisProcess(tmp_path_factory.mktemp("jobs-ops") / "redis").start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def api(redis_url: str) -> Iterator[TestClient]:
    """The API without a worker: jobs stay where the test puts them."""
    with TestClient(create_app(job_settings(redis_url, job_max_schedules=3))) as client:
        yield client


@pytest.fixture
def store(redis_url: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_url)
    yield client
    client.close()


def body(**fields: Any) -> dict[str, Any]:
    return {"source": shared_origin().url(TINY), "variants": [{"w": 16}], **fields}


def snapshot(store: redis_sync.Redis) -> dict[bytes, Any]:
    """Every key of the queue with its contents: what "changes nothing" compares.

    The in-process worker's heartbeat (its record's ``beat`` and its score in the registry)
    is left out: it is written on the worker's own timer, whatever a request does.
    """
    found: dict[bytes, Any] = {}
    for key in store.scan_iter(match=PREFIX + "*"):
        kind = store.type(key)
        registry = key.endswith(b":workers") or b":worker:" in key
        if kind == b"hash":
            found[key] = store.hgetall(key)
            if registry:
                found[key].pop(b"beat", None)
        elif kind == b"zset":
            found[key] = (
                store.zrange(key, 0, -1) if registry else store.zrange(key, 0, -1, withscores=True)
            )
        elif kind == b"list":
            found[key] = store.lrange(key, 0, -1)
        elif kind == b"set":
            found[key] = store.smembers(key)
        else:
            found[key] = store.get(key)
    return found


def queue_of(api: TestClient, priority: str) -> dict[str, Any]:
    queues = api.get("/v1/queues", headers=ADMIN).json()
    return next(entry for entry in queues["priorities"] if entry["priority"] == priority)


# --------------------------------------------------------------------------- access


def test_the_admin_key_sees_every_tenant_and_tenants_see_their_own(api: TestClient) -> None:
    mine, theirs = submit(api, body(), AUTH_A), submit(api, body(), AUTH_B)
    everything = {j["id"] for j in api.get("/v1/jobs?limit=100", headers=ADMIN).json()["jobs"]}
    assert {mine, theirs} <= everything
    only_b = api.get(f"/v1/jobs?tenant={TENANT_B}&limit=100", headers=ADMIN).json()["jobs"]
    assert theirs in {j["id"] for j in only_b} and all(j["tenant"] == TENANT_B for j in only_b)
    assert get_job(api, theirs, ADMIN)["tenant"] == TENANT_B
    assert api.get(f"/v1/jobs?tenant={TENANT_B}", headers=AUTH_A).json() == {"jobs": []}
    for path in ("/v1/queues", "/v1/workers", "/v1/stats"):
        refused = api.get(path, headers=AUTH_A)
        assert refused.status_code == 401, path
        assert refused.headers["content-type"] == "application/problem+json"
    assert api.post("/v1/jobs", json=body(), headers=ADMIN).status_code == 403


def test_without_an_admin_key_the_admin_api_is_off(redis_url: str) -> None:
    with TestClient(create_app(job_settings(redis_url, admin_key=""))) as client:
        response = client.get("/v1/queues", headers=ADMIN)
    assert response.status_code == 403
    assert response.json()["type"] == "urn:imgsrv:problem:admin-disabled"


def test_an_admin_key_that_is_also_an_api_key_stops_the_server() -> None:
    from imgsrv.config import ConfigError

    with pytest.raises(ConfigError, match="admin_key"):
        create_app(load_settings({}, api_keys=("a:same-key",), admin_key="same-key"))


# --------------------------------------------------------------------------- queues, pause


def test_queues_show_depth_age_and_paused_state_per_priority_and_tenant(
    api: TestClient,
) -> None:
    before = queue_of(api, "low")
    ids = [submit(api, body(priority="low"), AUTH_A) for _ in range(3)]
    ids.append(submit(api, body(priority="low"), AUTH_B))
    time.sleep(0.2)
    low = queue_of(api, "low")
    assert low["depth"] == before["depth"] + 4 and low["paused"] is False
    assert low["oldest_age_s"] >= 0.2
    tenants = {row["tenant"]: row for row in low["tenants"]}
    assert tenants[TENANT_A]["depth"] >= 3 and tenants[TENANT_B]["depth"] >= 1
    for job_id in ids:
        api.delete(f"/v1/jobs/{job_id}", headers=ADMIN)
    assert queue_of(api, "low")["depth"] == before["depth"]


def test_a_paused_priority_starts_nothing_until_resumed(redis_url: str, origin: Origin) -> None:
    with TestClient(create_app(job_settings(redis_url, job_workers=1))) as app:
        paused = app.post("/v1/queues/high/pause", headers=ADMIN)
        assert paused.status_code == 200 and paused.json() == {
            "priority": "high", "paused": True, "changed": True,
        }  # fmt: skip
        assert app.post("/v1/queues/high/pause", headers=ADMIN).json()["changed"] is False
        held = submit(app, {"source": origin.url(TINY), "variants": [{"w": 9}], "priority": "high"})
        passes = submit(app, {"source": origin.url(TINY), "variants": [{"w": 10}]})
        assert wait_status(app, passes)["status"] == "succeeded"
        time.sleep(0.3)  # several polls of the worker
        assert get_job(app, held)["status"] == "queued" and queue_of(app, "high")["paused"]
        resumed = app.post("/v1/queues/high/resume", headers=ADMIN)
        assert resumed.json()["paused"] is False
        assert wait_status(app, held)["status"] == "succeeded"
        assert app.post("/v1/queues/urgent/pause", headers=ADMIN).status_code == 404


# --------------------------------------------------------------------------- priority


def test_a_queued_job_changes_priority_and_a_running_one_does_not(api: TestClient) -> None:
    job_id = submit(api, body(priority="low"))
    moved = api.patch(f"/v1/jobs/{job_id}", json={"priority": "high"}, headers=AUTH_A)
    assert moved.status_code == 200 and moved.json()["priority"] == "high"
    assert moved.json()["timeline"][-1]["event"] == "priority"
    assert queue_of(api, "high")["depth"] >= 1
    again = api.patch(f"/v1/jobs/{job_id}", json={"priority": "high"}, headers=ADMIN)
    assert again.status_code == 200
    for bad, field in (
        ({"priority": "urgent"}, "priority"),
        ({"colour": 1}, "colour"),
        ({}, "priority"),
    ):
        response = api.patch(f"/v1/jobs/{job_id}", json=bad, headers=AUTH_A)
        assert response.status_code == 400 and response.json()["field"] == field
    assert (
        api.patch(f"/v1/jobs/{job_id}", json={"priority": "low"}, headers=AUTH_B).status_code == 404
    )
    api.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
    finished = api.patch(f"/v1/jobs/{job_id}", json={"priority": "low"}, headers=AUTH_A)
    assert finished.status_code == 409
    assert finished.json()["type"] == "urn:imgsrv:problem:job-conflict"


# --------------------------------------------------------------------------- dead letters


def test_a_failed_job_stays_listed_and_runs_again_on_retry(redis_url: str, origin: Origin) -> None:
    path = f"flaky/dead-{time.monotonic_ns()}?fail=3&file=jpeg/baseline-tiny-nometa.jpg"
    with TestClient(create_app(job_settings(redis_url, job_workers=1))) as app:
        job_id = submit(app, {"source": origin.url(path), "variants": [{"w": 12}]})
        dead = wait_status(app, job_id)
        assert dead["status"] == "failed" and dead["attempts"] == 3
        assert dead["error"]["type"] == "urn:imgsrv:problem:source-failed"
        failed = app.get("/v1/jobs?status=failed&limit=100", headers=AUTH_A).json()["jobs"]
        assert job_id in {j["id"] for j in failed}
        assert app.post(f"/v1/jobs/{job_id}/retry", headers=AUTH_B).status_code == 404
        retried = app.post(f"/v1/jobs/{job_id}/retry", headers=AUTH_A)
        assert retried.status_code == 200
        again = retried.json()
        assert again["id"] == job_id and again["attempts"] == 0 and again["error"] is None
        assert again["status"] in ("queued", "running", "succeeded")
        done = wait_status(app, job_id)
        # The origin fails three times, then answers: the retry's first attempt succeeds.
        assert done["status"] == "succeeded" and done["attempts"] == 1
        events = [event["event"] for event in done["timeline"]]
        assert events.count("retried") == 1 and events[-1] == "succeeded"
        conflict = app.post(f"/v1/jobs/{job_id}/retry", headers=ADMIN)
        assert conflict.status_code == 409


def test_retry_is_idempotent_while_the_job_is_queued(api: TestClient) -> None:
    job_id = submit(api, body())
    api.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
    first = api.post(f"/v1/jobs/{job_id}/retry", headers=AUTH_A).json()
    second = api.post(f"/v1/jobs/{job_id}/retry", headers=AUTH_A).json()
    assert first["status"] == second["status"] == "queued"
    assert first["timeline"] == second["timeline"]  # the second call changed nothing
    assert api.post("/v1/jobs/" + "0" * 24 + "/retry", headers=AUTH_A).status_code == 404
    api.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)


# --------------------------------------------------------------------------- dependencies


def test_a_job_waits_for_its_dependencies_and_fails_or_is_cancelled_with_them(
    redis_url: str, api: TestClient, origin: Origin
) -> None:
    first = submit(api, body())
    second = submit(api, body())
    child = submit(api, body(depends_on=[first, second]))
    waiting = get_job(api, child)
    assert waiting["status"] == "queued" and waiting["waiting_for_dependencies"] == 2
    assert waiting["dependencies"] == [
        {"id": first, "status": "queued"}, {"id": second, "status": "queued"},
    ]  # fmt: skip
    doomed = submit(api, body(depends_on=[second]))
    grandchild = submit(api, body(depends_on=[doomed]))
    with TestClient(create_app(job_settings(redis_url, job_workers=1, job_max_attempts=1))):
        # The workers run the two dependencies; the child runs after both.
        done = wait_status(api, child)
        assert done["status"] == "succeeded"
        started = done["started_at"]
        assert all(get_job(api, dep)["finished_at"] <= started for dep in (first, second))
        assert wait_status(api, grandchild)["status"] == "succeeded"
    # A dependency cancelled: its dependents are cancelled with it, all the way down.
    parent = submit(api, body())
    kid = submit(api, body(depends_on=[parent]))
    grandkid = submit(api, body(depends_on=[kid]))
    api.delete(f"/v1/jobs/{parent}", headers=AUTH_A)
    assert get_job(api, kid)["status"] == "cancelled"
    assert get_job(api, grandkid)["status"] == "cancelled"
    # A dependency that fails for good fails its dependents.
    broken = submit(api, {"source": origin.url("status/404"), "variants": [{"w": 8}]})
    orphan = submit(api, body(depends_on=[broken]))
    with TestClient(create_app(job_settings(redis_url, job_workers=1))):
        failed = wait_status(api, orphan)
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "urn:imgsrv:problem:dependency-failed"
    assert failed["error"]["dependency"] == broken and failed["attempts"] == 0
    assert get_job(api, doomed)["status"] == "succeeded"
    assert get_job(api, grandchild)["status"] == "succeeded"
    # Retrying the dependent of a failed job is refused until the dependency is retried.
    refused = api.post(f"/v1/jobs/{orphan}/retry", headers=AUTH_A)
    assert refused.status_code == 409 and broken in refused.json()["detail"]


@pytest.mark.parametrize(
    "depends_on",
    [["0" * 24], ["not-an-id"], "same", "other-tenant", "failed"],
    ids=["missing", "malformed", "twice", "other-tenant", "failed"],
)
def test_bad_dependencies_are_400_naming_the_field_and_change_nothing(
    api: TestClient, store: redis_sync.Redis, depends_on: Any
) -> None:
    if depends_on == "same":
        job_id = submit(api, body())
        depends_on = [job_id, job_id]
    elif depends_on == "other-tenant":
        depends_on = [submit(api, body(), AUTH_B)]
    elif depends_on == "failed":
        job_id = submit(api, body())
        api.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
        depends_on = [job_id]
    before = snapshot(store)
    response = api.post("/v1/jobs", json=body(depends_on=depends_on), headers=AUTH_A)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["field"] == "depends_on"
    assert snapshot(store) == before


async def test_a_dependency_cycle_is_refused_at_submit(redis_url: str) -> None:
    # Dependencies must exist when a job is submitted, so the API cannot name a cycle; the
    # submit script walks the graph anyway, which a job id chosen ahead shows.
    from dataclasses import replace

    from redis.asyncio import Redis

    from imgsrv.jobs.config import JobConfig
    from imgsrv.jobs.errors import InvalidJob
    from imgsrv.jobs.queue import JobQueue, new_job_id
    from tests.test_jobs_queue import request

    client = Redis.from_url(redis_url)
    queue = JobQueue(client, JobConfig.from_settings(job_settings(redis_url)))
    planned = new_job_id()
    first, _ = await queue.submit("cyclic", request())
    # A record that says the first job depends on the job about to be submitted.
    await client.hset(queue.job_key(first.id), "deps", f'["{planned}"]')
    with pytest.raises(InvalidJob, match="cycle") as refused:
        await queue.submit("cyclic", replace(request(), depends_on=(first.id,)), job_id=planned)
    assert refused.value.culprit == "depends_on"
    assert await client.exists(queue.job_key(planned)) == 0
    await client.aclose()


# --------------------------------------------------------------------------- schedules


def test_schedules_are_created_listed_and_deleted_per_tenant(api: TestClient) -> None:
    created = api.post(
        "/v1/schedules",
        json={"cron": "*/15 * * * *", "timezone": "Europe/Riga", "job": body(priority="low")},
        headers=AUTH_A,
    )
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert created.headers["location"] == f"/v1/schedules/{schedule['id']}"
    assert schedule["cron"] == "*/15 * * * *" and schedule["timezone"] == "Europe/Riga"
    assert schedule["last_run"] is None and schedule["last_job"] is None and schedule["fired"] == 0
    minute = int(schedule["next_run"][14:16])
    assert minute % 15 == 0
    mine = api.get("/v1/schedules", headers=AUTH_A).json()["schedules"]
    assert schedule["id"] in {s["id"] for s in mine}
    assert api.get("/v1/schedules", headers=AUTH_B).json()["schedules"] == []
    assert schedule["id"] in {
        s["id"] for s in api.get("/v1/schedules", headers=ADMIN).json()["schedules"]
    }
    path = f"/v1/schedules/{schedule['id']}"
    assert api.get(path, headers=AUTH_B).status_code == 404
    assert api.delete(path, headers=AUTH_B).status_code == 404
    assert api.delete(path, headers=AUTH_A).status_code == 200
    gone = api.get(path, headers=AUTH_A)
    assert (
        gone.status_code == 404 and gone.json()["type"] == "urn:imgsrv:problem:schedule-not-found"
    )
    assert api.delete(path, headers=AUTH_A).status_code == 404


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "@daily"}, "cron"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"job": {"source": "local://sample.jpg"}}, "job.variants"),
        ({"job": body(variants=[{"w": "wide"}])}, "job.variants[0]"),
        ({"job": body(run_at="2030-01-01T00:00:00Z")}, "job.run_at"),
        ({"job": body(idempotency_key="k")}, "job.idempotency_key"),
        ({"job": body(colour="red")}, "job.colour"),
        ({"every": "day"}, "every"),
    ],
)
def test_bad_schedules_are_400_naming_the_field_and_change_nothing(
    api: TestClient, store: redis_sync.Redis, fields: dict[str, Any], field: str
) -> None:
    before = snapshot(store)
    request = {"cron": "0 3 * * *", "timezone": "UTC", "job": body(), **fields}
    response = api.post("/v1/schedules", json=request, headers=AUTH_A)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["field"] == field
    assert snapshot(store) == before


def test_a_tenant_has_at_most_the_configured_number_of_schedules(api: TestClient) -> None:
    request = {"cron": "0 3 * * *", "job": body()}
    ids = [api.post("/v1/schedules", json=request, headers=AUTH_B).json()["id"] for _ in range(3)]
    refused = api.post("/v1/schedules", json=request, headers=AUTH_B)
    assert refused.status_code == 409
    assert refused.json()["type"] == "urn:imgsrv:problem:too-many-schedules"
    for schedule_id in ids:
        api.delete(f"/v1/schedules/{schedule_id}", headers=AUTH_B)


# --------------------------------------------------------------------------- bad ids


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/{job}"),
        ("DELETE", "/v1/jobs/{job}"),
        ("POST", "/v1/jobs/{job}/retry"),
        ("GET", "/v1/schedules/{job}"),
        ("DELETE", "/v1/schedules/{job}"),
        ("GET", "/v1/workers/{job}"),
    ],
)
@pytest.mark.parametrize("job", ["0" * 24, "nope"])
def test_unknown_ids_are_404_and_change_nothing(
    api: TestClient, store: redis_sync.Redis, method: str, path: str, job: str
) -> None:
    before = snapshot(store)
    headers = ADMIN if "workers" in path else AUTH_A
    response = api.request(method, path.format(job=job), headers=headers)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert snapshot(store) == before


def test_another_tenants_job_is_404_for_every_action(
    api: TestClient, store: redis_sync.Redis
) -> None:
    theirs = submit(api, body(), AUTH_B)
    before = snapshot(store)
    for method, path, payload in (
        ("GET", f"/v1/jobs/{theirs}", None),
        ("DELETE", f"/v1/jobs/{theirs}", None),
        ("PATCH", f"/v1/jobs/{theirs}", {"priority": "high"}),
        ("POST", f"/v1/jobs/{theirs}/retry", None),
    ):
        response = api.request(method, path, json=payload, headers=AUTH_A)
        assert response.status_code == 404, (method, path)
    assert snapshot(store) == before
    assert get_job(api, theirs, AUTH_B)["tenant"] == TENANT_B
