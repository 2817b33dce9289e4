"""The job API over HTTP: auth and tenant isolation, validation, idempotency, listing, cancel."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from imgsrv.app import create_app
from imgsrv.config import ConfigError, load_settings
from imgsrv.jobs.auth import ApiKeys
from imgsrv.jobs.config import JobConfig
from tests.job_fixtures import (
    AUTH_A,
    AUTH_B,
    KEY_A,
    TENANT_A,
    TINY,
    get_job,
    job_settings,
    submit,
)
from tests.origin import Origin, shared_origin
from tests.servers import RedisProcess


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The API without a worker: submitted jobs stay queued."""
    redis = RedisProcess(tmp_path_factory.mktemp("jobs-api") / "redis").start()
    settings = job_settings(
        redis.url, presets={"thumb": "rs:cover:64:64/f:webp"}, job_max_variants=4
    )
    try:
        with TestClient(create_app(settings)) as client:
            yield client
    finally:
        redis.stop()


def tiny(origin: Origin | None = None) -> str:
    return (origin or shared_origin()).url(TINY)


def job_body(**fields: Any) -> dict[str, Any]:
    return {"source": tiny(), "variants": [{"w": 32}], **fields}


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY_A}, AUTH_A | {"x": "y"}],
    ids=["missing", "unknown", "no-scheme", "valid"],
)
def test_requests_without_a_valid_key_get_401(api: TestClient, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/" + "0" * 24),
    ]:
        response = api.request(method, path, headers=headers, json=job_body())
        if headers.get("Authorization") == AUTH_A["Authorization"]:
            assert response.status_code in (200, 202, 404)
            continue
        assert response.status_code == 401, (method, path)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["type"] == "urn:imgsrv:problem:api-key-required"


def test_a_tenant_sees_only_its_own_jobs(api: TestClient) -> None:
    mine = submit(api, job_body(), AUTH_A)
    theirs = submit(api, job_body(), AUTH_B)
    assert api.get(f"/v1/jobs/{theirs}", headers=AUTH_A).status_code == 404
    assert api.delete(f"/v1/jobs/{theirs}", headers=AUTH_A).status_code == 404
    assert get_job(api, theirs, AUTH_B)["status"] == "queued"  # the failed cancel changed nothing
    listed = {j["id"] for j in api.get("/v1/jobs?limit=100", headers=AUTH_A).json()["jobs"]}
    assert mine in listed and theirs not in listed


def test_api_keys_from_the_environment_map_keys_to_tenants() -> None:
    settings = load_settings({"IMGSRV_API_KEYS": "tenant-a:key1,tenant-b:key2"})
    keys = JobConfig.from_settings(settings).keys
    assert (keys.tenant("key1"), keys.tenant("key2"), keys.tenant("key3")) == (
        "tenant-a",
        "tenant-b",
        None,
    )
    assert keys.key_of("tenant-b") == "key2"


@pytest.mark.parametrize(
    "entries", [("no-colon",), ("bad tenant:k",), ("a:",), ("a:same", "b:same")]
)
def test_malformed_api_keys_stop_the_server_at_start(entries: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        ApiKeys(entries)
    with pytest.raises(ConfigError):
        create_app(load_settings({}, api_keys=entries))


@pytest.mark.parametrize(
    ("name", "value"),
    [("job_priority_weights", "8:4"), ("job_callback_secret", "xyz"), ("job_heartbeat", 99.0)],
)
def test_bad_job_settings_stop_the_server_at_start(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        JobConfig.from_settings(load_settings({}, **{name: value}))


def test_without_redis_the_job_api_answers_503(tmp_path: Path) -> None:
    settings = load_settings(
        {},
        embedded_redis=False,
        api_keys=(f"{TENANT_A}:{KEY_A}",),
        allow_source_networks=("127.0.0.0/8",),
        access_log=False,
    )
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/jobs", json=job_body(), headers=AUTH_A)
    assert response.status_code == 503
    assert response.json()["type"] == "urn:imgsrv:problem:queue-unavailable"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "status", "problem", "field"),
    [
        ({"variants": [{"w": "wide"}]}, 400, "invalid-job", "variants[0]"),
        ({"variants": [{"w": 32}, {"zoom": 2}]}, 400, "invalid-job", "variants[1]"),
        ({"variants": [{"w": 32, "f": "auto"}]}, 400, "invalid-job", "variants[0]"),
        ({"variants": [{"ttl": "2d"}]}, 400, "invalid-job", "variants[0]"),
        ({"variants": [{"w": {"nested": 1}}]}, 400, "invalid-job", "variants[0]"),
        ({"variants": [{"pr": "missing"}]}, 400, "invalid-job", "variants[0]"),
        ({"variants": [{"w": 9000}]}, 400, "invalid-job", "variants[0]"),
        ({"variants": []}, 400, "invalid-job", "variants"),
        ({"variants": [{"w": 1}] * 5}, 400, "invalid-job", "variants"),
        ({"variants": "w:32"}, 400, "invalid-job", "variants"),
        ({"source": 42}, 400, "invalid-job", "source"),
        ({"source": "ftp://example.com/a.jpg"}, 400, "invalid-source", None),
        ({"source": "http://10.0.0.7/a.jpg"}, 403, "forbidden-source", None),
        ({"source": "http://169.254.169.254/latest"}, 403, "forbidden-source", None),
        ({"source": "local://../etc/passwd"}, 403, "forbidden-source", None),
        ({"priority": "urgent"}, 400, "invalid-job", "priority"),
        ({"ttl": 60}, 400, "invalid-job", "ttl"),
        ({"ttl": "5d"}, 400, "invalid-job", "ttl"),
        ({"ttl": True}, 400, "invalid-job", "ttl"),
        ({"delay_s": 5, "run_at": "2030-01-01T00:00:00Z"}, 400, "invalid-job", "run_at"),
        ({"delay_s": -1}, 400, "invalid-job", "delay_s"),
        ({"delay_s": "soon"}, 400, "invalid-job", "delay_s"),
        ({"run_at": "tomorrow"}, 400, "invalid-job", "run_at"),
        ({"run_at": "2030-01-01T00:00:00"}, 400, "invalid-job", "run_at"),
        ({"run_at": "2999-01-01T00:00:00Z"}, 400, "invalid-job", "run_at"),
        ({"callback_url": "ftp://hooks.example/x"}, 400, "invalid-job", "callback_url"),
        ({"callback_url": "/relative"}, 400, "invalid-job", "callback_url"),
        ({"callback_url": "http://u:p@hooks.example/x"}, 400, "invalid-job", "callback_url"),
        ({"callback_url": "http://10.1.2.3/hook"}, 403, "forbidden-callback", None),
        ({"callback_url": "http://[::ffff:a9fe:a9fe]/hook"}, 403, "forbidden-callback", None),
        ({"callback_url": "http://0xa9fea9fe/hook"}, 403, "forbidden-callback", None),
        ({"idempotency_key": ""}, 400, "invalid-job", "idempotency_key"),
        ({"idempotency_key": "x" * 256}, 400, "invalid-job", "idempotency_key"),
        ({"colour": "red"}, 400, "invalid-job", "colour"),
    ],
)
def test_bad_submissions_are_refused_at_submit_time(
    api: TestClient, fields: dict[str, Any], status: int, problem: str, field: str | None
) -> None:
    response = api.post("/v1/jobs", json=job_body(**fields), headers=AUTH_A)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"urn:imgsrv:problem:{problem}"
    assert body.get("field") == field


def test_a_private_callback_host_is_allowed_in_an_allowed_network(api: TestClient) -> None:
    # The test settings allow 127.0.0.0/8 (for the test origin), for callbacks as for sources.
    job_id = submit(api, job_body(callback_url="http://127.0.0.1:9/hook"))
    assert get_job(api, job_id)["callback"] == {
        "url": "http://127.0.0.1:9/hook",
        "status": "waiting",
        "attempts": 0,
    }


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b'"job"', b"null", b'{"source": "x", "variants": [{"w": 1}]'],
    ids=["empty", "truncated", "list", "string", "null", "unclosed"],
)
def test_malformed_json_is_a_400(api: TestClient, body: bytes) -> None:
    response = api.post("/v1/jobs", content=body, headers=AUTH_A)
    assert response.status_code == 400
    assert response.json()["type"] == "urn:imgsrv:problem:invalid-job"


def test_an_oversized_body_is_a_413(api: TestClient) -> None:
    body = b'{"source": "' + b"a" * (1024 * 1024) + b'"}'
    response = api.post("/v1/jobs", content=body, headers=AUTH_A)
    assert response.status_code == 413


def test_variant_values_may_be_strings_numbers_booleans_or_lists(api: TestClient) -> None:
    variants = [
        {"rs": ["cover", 64, 48], "f": "webp"},
        {"resize": "cover:64:48", "format": "webp"},
        {"width": 64, "height": 48, "enlarge": False, "strip": True, "f": "webp"},
        {"preset": "thumb", "g": ["fp", 0.25, 0.75], "bg": "ff0000", "q": 70},
    ]
    job = get_job(api, submit(api, {"source": tiny(), "variants": variants, "ttl": "2d"}))
    assert job["ttl"] == 2 * 86_400
    assert [v["options"] for v in job["variants"]] == variants
    assert job["progress"] == {"done": 0, "total": 4}
    assert all(v["result"] is None for v in job["variants"])


# --------------------------------------------------------------------------- behaviour


def test_submit_answers_202_with_the_job_and_links(api: TestClient) -> None:
    response = api.post("/v1/jobs", json=job_body(priority="low"), headers=AUTH_A)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]
    assert response.headers["cache-control"] == "no-store"
    assert job["status"] == "queued" and job["priority"] == "low"
    assert job["attempts"] == 0 and job["max_attempts"] == 3
    assert job["source"] == tiny() and job["ttl"] == 86_400
    assert job["created_at"] == job["run_at"] and job["created_at"].endswith("Z")
    assert job["started_at"] is None and job["finished_at"] is None
    assert job["error"] is None and job["callback"] is None
    assert get_job(api, job["id"]) == job


def test_the_same_idempotency_key_gives_the_same_job(api: TestClient) -> None:
    body = job_body(idempotency_key="upload-42")
    first = api.post("/v1/jobs", json=body, headers=AUTH_A)
    again = api.post("/v1/jobs", json=body | {"priority": "high"}, headers=AUTH_A)
    other = api.post("/v1/jobs", json=body, headers=AUTH_B)
    assert first.status_code == again.status_code == other.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.json()["priority"] == "normal"  # the first submission's job, unchanged
    assert other.json()["id"] != first.json()["id"]
    assert first.json()["idempotency_key"] == "upload-42"


def test_delay_and_run_at_set_the_start_time(api: TestClient) -> None:
    delayed = get_job(api, submit(api, job_body(delay_s=90)))
    assert _seconds(delayed["run_at"]) - _seconds(delayed["created_at"]) == 90
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=10)
    local = at.astimezone(timezone(timedelta(hours=2))).isoformat()
    scheduled = get_job(api, submit(api, job_body(run_at=local)))
    assert scheduled["run_at"] == at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_listing_filters_by_status_and_limit_newest_first(api: TestClient) -> None:
    ids = [submit(api, job_body(), AUTH_B) for _ in range(3)]
    cancelled = api.delete(f"/v1/jobs/{ids[0]}", headers=AUTH_B)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    queued = api.get("/v1/jobs?status=queued&limit=2", headers=AUTH_B).json()["jobs"]
    assert [j["id"] for j in queued] == [ids[2], ids[1]]
    done = api.get("/v1/jobs?status=cancelled", headers=AUTH_B).json()["jobs"]
    assert ids[0] in [j["id"] for j in done] and ids[1] not in [j["id"] for j in done]
    for query in ("status=lost", "limit=0", "limit=101", "limit=ten"):
        response = api.get(f"/v1/jobs?{query}", headers=AUTH_B)
        assert response.status_code == 400, query


def test_cancel_of_a_queued_job_is_immediate_and_final(api: TestClient) -> None:
    job_id = submit(api, job_body())
    first = api.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert first.status_code == 200
    job = first.json()
    assert job["status"] == "cancelled" and job["cancel_requested"] and job["finished_at"]
    again = api.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert again.status_code == 200 and again.json()["finished_at"] == job["finished_at"]


@pytest.mark.parametrize("job_id", ["0" * 24, "not-a-job", "0" * 23 + "g", "A" * 24, "0" * 25])
def test_unknown_job_ids_are_404(api: TestClient, job_id: str) -> None:
    for method in ("GET", "DELETE"):
        response = api.request(method, f"/v1/jobs/{job_id}", headers=AUTH_A)
        assert response.status_code == 404
        assert response.json()["type"] == "urn:imgsrv:problem:job-not-found"


def test_wrong_methods_are_405_with_allow(api: TestClient) -> None:
    response = api.put("/v1/jobs", headers=AUTH_A)
    assert response.status_code == 405 and "POST" in response.headers["allow"]
    response = api.put("/v1/jobs/" + "0" * 24, headers=AUTH_A)
    assert response.status_code == 405 and "PATCH" in response.headers["allow"]


def test_openapi_document_is_served_without_a_key(api: TestClient) -> None:
    response = api.get("/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/retry",
        "/v1/queues",
        "/v1/queues/{priority}/pause",
        "/v1/queues/{priority}/resume",
        "/v1/workers",
        "/v1/workers/{worker_id}",
        "/v1/schedules",
        "/v1/schedules/{schedule_id}",
        "/v1/stats",
        "/v1/openapi.json",
    }
    schemas = document["components"]["schemas"]
    variants = schemas["JobSubmission"]["properties"]["variants"]
    assert variants["maxItems"] == 4  # the configured job_max_variants
    assert "w" in variants["items"]["propertyNames"]["enum"]
    assert "ttl" not in variants["items"]["propertyNames"]["enum"]
