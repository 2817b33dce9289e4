"""Jobs end to end in one process: render, retry, delay, cancel, callbacks, logs, metrics.

The server's own worker runs the jobs (``job_workers``), against a real redis-server and a real
origin on 127.0.0.1 that also plays the callback receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import pyvips
import redis as redis_sync
from starlette.testclient import TestClient

from imgsrv.app import create_app
from imgsrv.cache.l2 import L2Cache
from imgsrv.config import Settings
from imgsrv.render import cache_key
from imgsrv.urls import parse_path
from tests.job_fixtures import (
    AUTH_A,
    AUTH_B,
    KEY_B,
    PHOTO,
    TINY,
    get_job,
    job_settings,
    submit,
    wait_for,
    wait_status,
)
from tests.origin import IMAGES_DIR, Origin, OriginRequestHandler
from tests.servers import RedisProcess

SECRET = "5ec2e7" * 8


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisProcess(tmp_path_factory.mktemp("jobs-lifecycle") / "redis").start()
    yield server.url
    server.stop()


@contextmanager
def server(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def settings_with_worker(redis_url: str, **overrides: object) -> Settings:
    return job_settings(redis_url, job_workers=2, job_callback_secret=SECRET, **overrides)


def slow_source(origin: Origin, path: str, delay: float) -> str:
    """An origin route that answers the tiny JPEG after ``delay`` seconds."""
    image = (IMAGES_DIR / TINY.removeprefix("files/")).read_bytes()

    def answer(handler: OriginRequestHandler) -> None:
        time.sleep(delay)
        handler.send_body(200, image, {"Content-Type": "image/jpeg"})

    origin.handler(path, answer)
    return origin.url(path)


def verify_signature(secret: bytes, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: HMAC-SHA256 over "timestamp.body", constant-time compare."""
    timestamp = headers["X-Imgsrv-Timestamp"]
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Imgsrv-Signature"], "sha256=" + expected)


class JobLog(logging.Handler):
    """Collects the job state lines the server logs."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(dict(vars(record)))


def test_three_variants_succeed_and_their_urls_are_cache_hits(
    redis_url: str, origin: Origin
) -> None:
    job_log = JobLog()
    logging.getLogger("imgsrv.jobs").addHandler(job_log)
    variants = [{"w": 320, "f": "webp"}, {"rs": ["cover", 200, 200], "f": "png"}, {"w": 150}]
    try:
        with server(settings_with_worker(redis_url, log_level="info")) as app:
            job_id = submit(app, {"source": origin.url(PHOTO), "variants": variants, "ttl": "2d"})
            job = wait_status(app, job_id)
            metrics_text = app.get("/metrics").text
    finally:
        logging.getLogger("imgsrv.jobs").removeHandler(job_log)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and job["error"] is None
    assert job["progress"] == {"done": 3, "total": 3}
    assert job["started_at"] >= job["created_at"] and job["finished_at"] >= job["started_at"]
    results = [v["result"] for v in job["variants"]]
    assert [(r["width"], r["height"], r["format"]) for r in results] == [
        (320, 213, "webp"),
        (200, 200, "png"),
        (150, 100, "jpeg"),
    ]
    assert origin.count(PHOTO) == 1  # the three variants shared one download
    statuses = [line["status"] for line in job_log.lines if line.get("job") == job_id]
    assert statuses == ["queued", "running", "succeeded"]
    assert 'imgsrv_jobs_finished_total{outcome="succeeded"}' in metrics_text
    assert 'imgsrv_jobs_queued{priority="low"}' in metrics_text

    # A fresh process (empty memory cache) answers every result URL from Redis.
    fresh_settings = job_settings(redis_url)
    client = redis_sync.Redis.from_url(redis_url)
    with server(fresh_settings) as fresh:
        for result in results:
            response = fresh.get(result["url"])
            assert response.status_code == 200
            assert response.headers["x-cache"] == "l2"
            assert response.headers["etag"] == result["etag"]
            assert response.headers["content-type"] == result["content_type"]
            assert len(response.content) == result["bytes"]
            image = pyvips.Image.new_from_buffer(response.content, "")
            assert (image.width, image.height) == (result["width"], result["height"])
            spec = parse_path(result["url"].encode(), fresh_settings).spec
            l2 = L2Cache(client, prefix="imgsrv")  # type: ignore[arg-type]  # naming only
            key = l2.image_key(cache_key(spec, frozenset()), spec.source)
            assert abs(client.ttl(key) - 2 * 86_400) < 60  # the job's ttl
    assert origin.count(PHOTO) == 1


def test_a_flaky_source_succeeds_on_the_third_attempt(redis_url: str, origin: Origin) -> None:
    source = origin.url(
        f"flaky/retry-{time.monotonic_ns()}?fail=2&file=jpeg/baseline-tiny-nometa.jpg"
    )
    with server(settings_with_worker(redis_url)) as app:
        job = wait_status(app, submit(app, {"source": source, "variants": [{"w": 20}]}))
    assert job["status"] == "succeeded"
    assert job["attempts"] == 3
    assert job["variants"][0]["result"]["width"] == 20
    # The last failed attempt's error stays visible.
    assert job["error"]["type"] == "urn:imgsrv:problem:source-failed"


def test_a_missing_source_fails_after_one_attempt(redis_url: str, origin: Origin) -> None:
    with server(settings_with_worker(redis_url)) as app:
        job_id = submit(app, {"source": origin.url("status/404"), "variants": [{"w": 20}]})
        job = wait_status(app, job_id)
    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert job["error"]["type"] == "urn:imgsrv:problem:source-not-found"
    assert job["error"]["status"] == 404 and job["error"]["variant"] == 0
    assert origin.count("status/404") == 1


def test_an_undecodable_image_fails_at_once(redis_url: str, origin: Origin) -> None:
    origin.route(
        "broken.jpg",
        body=b"\xff\xd8\xff\xe0 not really a jpeg",
        headers={"Content-Type": "image/jpeg"},
    )
    with server(settings_with_worker(redis_url)) as app:
        job_id = submit(app, {"source": origin.url("broken.jpg"), "variants": [{"w": 20}]})
        job = wait_status(app, job_id)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert job["error"]["status"] in (415, 422)


def test_a_delayed_job_does_not_start_early(redis_url: str, origin: Origin) -> None:
    with server(settings_with_worker(redis_url)) as app:
        submitted = time.monotonic()
        job_id = submit(app, {"source": origin.url(TINY), "variants": [{"w": 24}], "delay_s": 1.0})
        while time.monotonic() - submitted < 0.8:
            assert get_job(app, job_id)["status"] == "queued"
            time.sleep(0.05)
        job = wait_status(app, job_id)
    assert job["status"] == "succeeded"
    created = _seconds(job["created_at"])
    assert _seconds(job["run_at"]) - created == pytest.approx(1.0, abs=0.002)
    assert _seconds(job["started_at"]) >= _seconds(job["run_at"])


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_cancel_while_running_stops_between_variants(redis_url: str, origin: Origin) -> None:
    # Slow variants (a wide blur at full size): the job runs for a second or two, and all its
    # variants share one download and one decode.
    count = 8
    variants = [{"w": 1800 - 10 * i, "bl": 80} for i in range(count)]
    settings = settings_with_worker(redis_url, source_cache_ttl=0.0)
    downloads = origin.count(PHOTO)
    with server(settings) as app:
        job_id = submit(app, {"source": origin.url(PHOTO), "variants": variants})
        wait_for(lambda: get_job(app, job_id)["progress"]["done"] >= 1, what="first variant")
        response = app.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
        assert response.status_code == 202
        assert response.json()["status"] == "running" and response.json()["cancel_requested"]
        job = wait_status(app, job_id)
    assert job["status"] == "cancelled"
    done = job["progress"]["done"]
    assert 1 <= done < count
    assert [v["result"] is not None for v in job["variants"]] == [True] * done + [False] * (
        count - done
    )
    assert origin.count(PHOTO) == downloads + 1
    events = [event["event"] for event in job["timeline"]]
    assert events == ["submitted", "started", "cancel requested", "cancelled"]


def test_cancel_while_queued_means_it_never_runs(redis_url: str, origin: Origin) -> None:
    with server(settings_with_worker(redis_url)) as app:
        job_id = submit(app, {"source": origin.url(TINY), "variants": [{"w": 8}], "delay_s": 0.5})
        assert app.delete(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["status"] == "cancelled"
        time.sleep(0.8)  # past the delay, with the worker polling
        job = get_job(app, job_id)
    assert job["status"] == "cancelled" and job["attempts"] == 0 and job["started_at"] is None


def test_the_callback_is_signed_and_the_receiver_can_verify_it(
    redis_url: str, origin: Origin
) -> None:
    origin.route("hooks/signed", status=204)
    hook = origin.url("hooks/signed")
    with server(settings_with_worker(redis_url)) as app:
        job_id = submit(
            app, {"source": origin.url(TINY), "variants": [{"w": 12}], "callback_url": hook}
        )
        wait_status(app, job_id)
        job = wait_for(
            lambda: (j := get_job(app, job_id))["callback"]["status"] == "delivered" and j,
            what="callback delivery",
        )
    [request] = origin.requests("hooks/signed")
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Imgsrv-Job"] == job_id
    assert abs(int(request.headers["X-Imgsrv-Timestamp"]) - time.time()) < 30
    assert verify_signature(bytes.fromhex(SECRET), request.headers, request.body)
    assert not verify_signature(bytes.fromhex(SECRET), request.headers, request.body + b" ")
    sent = orjson.loads(request.body)
    assert sent["id"] == job_id and sent["status"] == "succeeded"
    assert sent["variants"] == job["variants"]
    assert job["callback"]["attempts"] == 1 and job["callback"]["last_status"] == 204


def test_a_receiver_that_fails_twice_gets_the_callback_the_third_time(
    redis_url: str, origin: Origin
) -> None:
    name = f"hooks/flaky-{time.monotonic_ns()}"
    hook = origin.url(f"flaky/{name}?fail=2&status=500")
    # No callback secret: callbacks are signed with the tenant's API key.
    settings = job_settings(redis_url, job_workers=1)
    with server(settings) as app:
        job_id = submit(
            app,
            {"source": origin.url(TINY), "variants": [{"w": 9}], "callback_url": hook},
            AUTH_B,
        )
        job = wait_for(
            lambda: (j := get_job(app, job_id, AUTH_B))["callback"]["status"] == "delivered" and j,
            what="callback delivery",
        )
    requests = origin.requests(f"flaky/{name}")
    assert len(requests) == 3
    for request in requests:
        assert verify_signature(KEY_B.encode(), request.headers, request.body)
    assert job["callback"]["attempts"] == 3 and job["callback"]["last_status"] == 200
    assert job["callback"]["delivered_at"] is not None


def test_a_callback_that_gives_up_is_marked_failed(redis_url: str, origin: Origin) -> None:
    hook = origin.url("status/503")
    settings = settings_with_worker(redis_url, job_callback_attempts=2)
    with server(settings) as app:
        job_id = submit(
            app, {"source": origin.url(TINY), "variants": [{"w": 7}], "callback_url": hook}
        )
        job = wait_for(
            lambda: (j := get_job(app, job_id))["callback"]["status"] == "failed" and j,
            what="callback to give up",
        )
    assert job["status"] == "succeeded"
    assert job["callback"]["attempts"] == 2 and job["callback"]["last_status"] == 503
    assert origin.count("status/503") == 2


def test_cancelling_a_queued_job_sends_its_callback(redis_url: str, origin: Origin) -> None:
    origin.route("hooks/cancel", status=200)
    with server(settings_with_worker(redis_url)) as app:
        job_id = submit(
            app,
            {
                "source": origin.url(TINY),
                "variants": [{"w": 6}],
                "delay_s": 60,
                "callback_url": origin.url("hooks/cancel"),
            },
        )
        app.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
        wait_for(lambda: origin.count("hooks/cancel") == 1, what="cancel callback")
    [request] = origin.requests("hooks/cancel")
    assert orjson.loads(request.body)["status"] == "cancelled"
    assert verify_signature(bytes.fromhex(SECRET), request.headers, request.body)


def test_callbacks_to_names_resolving_to_private_addresses_are_refused(
    redis_url: str, origin: Origin, corpus_dir: Path
) -> None:
    # No allowed networks: the guard refuses localhost after resolving it, at delivery time.
    settings = settings_with_worker(redis_url, allow_source_networks=(), local_root=str(corpus_dir))
    hook = f"http://localhost:{origin.port}/hooks/ssrf"
    with server(settings) as app:
        job_id = submit(
            app,
            {
                "source": "local://jpeg/baseline-tiny-nometa.jpg",
                "variants": [{"w": 5}],
                "callback_url": hook,
            },
        )
        job = wait_for(
            lambda: (j := get_job(app, job_id))["callback"]["status"] == "failed" and j,
            what="callback refusal",
        )
    assert job["status"] == "succeeded"
    assert job["callback"]["attempts"] == 1  # refused for good, not retried
    assert "non-public" in job["callback"]["last_error"]
    assert origin.count("hooks/ssrf") == 0


def test_the_readme_job_example_works(redis_url: str) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Jobs", 1)[1].split("\n## ", 1)[0]
    keys = re.search(r'export IMGSRV_API_KEYS="([^"]+)"', section)
    body = re.search(r"-d '(\{.*?\})'", section)
    auth = re.search(r"-H 'Authorization: Bearer ([^']+)'", section)
    assert keys and body and auth
    settings = job_settings(
        redis_url, api_keys=tuple(keys.group(1).split(",")), job_workers=1, local_root=""
    )
    headers = {"Authorization": f"Bearer {auth.group(1)}"}
    with server(settings) as app:
        response = app.post("/v1/jobs", content=body.group(1), headers=headers)
        assert response.status_code == 202, response.text
        job = wait_status(app, response.json()["id"], auth=headers)
    assert job["status"] == "succeeded"
    assert [v["result"]["format"] for v in job["variants"]] == ["webp", "jpeg"]
