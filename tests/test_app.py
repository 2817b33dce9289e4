"""The sync image path end to end through the real app: HTTP semantics, formats, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest
import pyvips
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from imgsrv.app import create_app
from tests.conftest import LiveServer, corpus_settings
from tests.origin import Origin

LANDSCAPE = "local://orientation/Landscape_1.jpg"  # 1800x1200
ALPHA_PNG = "local://png/rgba-8bit.png"
MAGIC = {
    "jpeg": lambda b: b[:3] == b"\xff\xd8\xff",
    "png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n",
    "webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
    "gif": lambda b: b[:6] in (b"GIF87a", b"GIF89a"),
    "avif": lambda b: b[4:12] in (b"ftypavif", b"ftypavis"),
}


def dims(data: bytes) -> tuple[int, int]:
    image = pyvips.Image.new_from_buffer(data, "")
    return image.width, image.height


def test_path_form_renders_webp_with_full_headers(client: TestClient) -> None:
    r = client.get(f"/_/w:300/plain/{LANDSCAPE}@webp")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    assert MAGIC["webp"](r.content)
    assert dims(r.content) == (300, 200)
    assert int(r.headers["content-length"]) == len(r.content)
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert r.headers["cache-control"] == "public, max-age=3600"  # unsigned URL
    assert r.headers["x-cache"] in ("miss", "l1", "l2")
    timing = r.headers["server-timing"]
    assert "fetch;dur=" in timing and "queue;dur=" in timing and "transform;dur=" in timing
    assert "vary" not in r.headers


def test_query_form_gives_the_same_bytes(client: TestClient) -> None:
    a = client.get(f"/_/rs:cover:200:200/plain/{LANDSCAPE}@png")
    b = client.get(f"/img?url={LANDSCAPE}&rs=cover:200:200&f=png")
    assert a.status_code == b.status_code == 200
    assert a.content == b.content
    assert a.headers["etag"] == b.headers["etag"]
    assert dims(b.content) == (200, 200)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif", "gif"])
def test_every_output_format_has_exact_type_and_magic(client: TestClient, fmt: str) -> None:
    r = client.get(f"/_/w:64/f:{fmt}/plain/{LANDSCAPE}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"image/{fmt}"
    assert MAGIC[fmt](r.content)


def test_etag_304_and_head(client: TestClient) -> None:
    url = f"/_/w:120/plain/{LANDSCAPE}"
    first = client.get(url)
    etag = first.headers["etag"]
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == first.headers["cache-control"]
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get(url, headers={"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    head = client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == etag
    assert head.headers["content-length"] == first.headers["content-length"]


@pytest.mark.parametrize(
    ("accept", "source", "fmt"),
    [
        ("image/avif,image/webp,*/*", LANDSCAPE, "avif"),
        ("image/avif;q=0,image/webp,*/*", LANDSCAPE, "webp"),
        ("image/webp;q=0, */*", LANDSCAPE, "jpeg"),
        ("*/*", ALPHA_PNG, "png"),
        ("image/webp", ALPHA_PNG, "webp"),
    ],
)
def test_auto_format_follows_accept_and_alpha_with_vary(
    client: TestClient, accept: str, source: str, fmt: str
) -> None:
    url = f"/_/w:50/f:auto/plain/{source}"
    r = client.get(url, headers={"Accept": accept})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"image/{fmt}"
    assert MAGIC[fmt](r.content)
    assert r.headers["vary"] == "Accept"
    cached = client.get(url, headers={"Accept": accept, "If-None-Match": r.headers["etag"]})
    assert cached.status_code == 304
    assert cached.headers["vary"] == "Accept"


def test_info_returns_metadata(client: TestClient) -> None:
    r = client.get("/info/_/plain/local://orientation/Landscape_6.jpg")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = orjson.loads(r.content)
    assert body["format"] == "jpeg"
    assert body["orientation"] == 6
    assert (body["width"], body["height"]) == (1800, 1200)  # as displayed
    assert body["alpha"] is False and body["pages"] == 1
    q = client.get("/info?url=local://gif/animated-cogs-5-frames.gif")
    assert q.status_code == 200 and orjson.loads(q.content)["pages"] == 5


def assert_problem(r: httpx.Response, status: int, needle: str = "") -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["cache-control"] == "no-store"
    body: dict[str, object] = orjson.loads(r.content)
    assert body["status"] == status
    assert str(body["type"]).startswith("urn:imgsrv:problem:")
    assert needle in str(body["detail"])
    return body


def test_unknown_and_malformed_options_are_400_naming_the_option(client: TestClient) -> None:
    body = assert_problem(client.get(f"/_/zoom:3/plain/{LANDSCAPE}"), 400, "zoom")
    assert body["option"] == "zoom"
    body = assert_problem(client.get(f"/_/w:huge/plain/{LANDSCAPE}"), 400, "'w'")
    assert body["option"] == "w"
    assert_problem(client.get(f"/img?url={LANDSCAPE}&q=1000"), 400, "'q'")


def test_source_errors_map_to_statuses(client: TestClient) -> None:
    assert_problem(client.get("/_/w:10/plain/local://nope/missing.jpg"), 404)
    assert_problem(client.get("/_/w:10/plain/local://..%2F..%2Fetc%2Fpasswd"), 403)
    assert_problem(client.get("/_/w:10/plain/ftp:%2F%2Fexample.com%2Fa.jpg"), 400)
    assert_problem(client.get("/_/w:10/plain/local://jxl/photo-dice.jxl"), 415)
    assert_problem(client.get("/_/w:10/plain/local://malformed/truncated.jpg"), 422)
    assert_problem(client.get("/_/w:10/plain/local://bombs/png-65536x65536-uint32-limit.png"), 413)


def test_unmatched_methods_are_problems_too(client: TestClient) -> None:
    r = client.post(f"/_/w:10/plain/{LANDSCAPE}")
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"


def test_image_requests_leave_other_routes_to_the_router(client: TestClient) -> None:
    from imgsrv.routes.images import ImageRequests

    router = ImageRequests(["/healthz", "/v1/jobs", "/v1/jobs/{job_id}", "/img", "/{rest:path}"])

    def handled(method: str, path: str) -> bool:
        return router.handles({"type": "http", "method": method, "path": path})

    assert handled("GET", "/_/w:10/plain/a.jpg") and handled("HEAD", "/img")
    assert handled("GET", "/healthz/x") and handled("GET", "/v1/jobsx")
    assert not handled("POST", "/_/w:10/plain/a.jpg")
    assert not handled("GET", "/healthz") and not handled("GET", "/v1/jobs/abc")
    # Through the real app: a path under /v1/ (the API) that a route owns for another method
    # is a 405 naming the methods there are, never an image URL.
    refused = client.get("/v1/cache")
    assert refused.status_code == 405 and refused.headers["allow"] == "DELETE"
    assert client.get("/v1/jobs/abc").status_code == 401  # the job API, not an image
    assert_problem(client.get("/img"), 400, "url")


def test_signed_mode_requires_signatures(corpus_dir: Path) -> None:
    from imgsrv.urls import build_path, sign_path

    settings = corpus_settings(signing_key="ab" * 32, signing_salt="cd" * 16)
    with TestClient(create_app(settings)) as signed_client:
        path = build_path(LANDSCAPE, ["w:100"], "jpeg")
        ok = signed_client.get(sign_path(path, settings))
        assert ok.status_code == 200
        assert ok.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert_problem(signed_client.get("/_" + path), 403)
        assert_problem(signed_client.get(sign_path(path, settings).replace("w:100", "w:101")), 403)


def test_ops_endpoints(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.get(f"/_/w:10/plain/{LANDSCAPE}")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'imgsrv_http_requests_total{route="image_path",status="200"}' in metrics.text
    assert "imgsrv_transform_duration_seconds_bucket" in metrics.text
    assert "imgsrv_pool_admitted 0.0" in metrics.text
    place = client.app.state.renderer.pool.admit()  # type: ignore[attr-defined]
    try:
        assert "imgsrv_pool_admitted 1.0" in client.get("/metrics").text
    finally:
        place.release()


def test_overload_sheds_with_503_and_retry_after_fast(corpus_dir: Path) -> None:
    settings = corpus_settings(transform_threads=1, max_queue=1, retry_after=2, refusal_delay=0)
    # Deliberately slow transforms (a big blur on a large image), all different so that
    # nothing is coalesced or cached.
    urls = [f"/_/bl:{40 + i}/el:1/w:3000/plain/{LANDSCAPE}" for i in range(8)]

    async def burst(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            return await asyncio.gather(*(http.get(url) for url in urls))

    with LiveServer(settings) as server:
        responses = asyncio.run(burst(server.url))
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 2
        shed = [r for r in responses if r.status_code == 503]
        assert shed, statuses
        for r in shed:
            assert r.headers["retry-after"] in ("2", "3")  # at least 2, spread at random
            assert r.headers["content-type"] == "application/problem+json"
            assert r.elapsed.total_seconds() < 0.5
        assert set(statuses) <= {200, 503}
        # the server is fine afterwards
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_ssrf_guard_refuses_private_sources_over_http(client: TestClient, origin: Origin) -> None:
    photo = origin.url("files/orientation/Landscape_1.jpg")
    port = origin.port
    for source in (
        photo,  # 127.0.0.1: loopback
        f"http://localhost:{port}/files/orientation/Landscape_1.jpg",
        "http://10.0.0.1/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::1]:{port}/a.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/a.jpg",
    ):
        r = client.get(f"/_/w:10/plain/{quote(source, safe='')}")
        assert_problem(r, 403)
    assert origin.total() == 0


def test_allowed_networks_let_a_local_origin_through_but_not_redirects_elsewhere(
    corpus_dir: Path, origin: Origin
) -> None:
    settings = corpus_settings(allow_source_networks=("127.0.0.0/8",))
    photo = origin.url("files/orientation/Landscape_1.jpg")
    to_private = origin.url("redirect?to=" + quote("http://10.0.0.1/x.jpg", safe=""))
    with TestClient(create_app(settings)) as allowed:
        ok = allowed.get(f"/_/w:10/plain/{quote(photo, safe='')}")
        assert ok.status_code == 200 and dims(ok.content)[0] == 10
        assert_problem(allowed.get(f"/_/w:10/plain/{quote(to_private, safe='')}"), 403)
        assert_problem(
            allowed.get(f"/_/w:10/plain/{quote(origin.url('status/404'), safe='')}"), 404
        )
        assert_problem(
            allowed.get(f"/_/w:10/plain/{quote(origin.url('status/500'), safe='')}"), 502
        )


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=120))
@hsettings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_garbage_paths_never_5xx(client: TestClient, text: str) -> None:
    # (a leading "//" would make the client read the path as a host name)
    r = client.get("/" + quote(text.lstrip("/"), safe="/:@%?&=._-"))
    assert r.status_code < 500, (text, r.status_code, r.text[:200])


def test_sheds_at_once_while_admitted_requests_are_still_downloading(
    corpus_dir: Path, origin: Origin
) -> None:
    settings = corpus_settings(
        transform_threads=1,
        max_queue=1,
        allow_source_networks=("127.0.0.0/8",),
        refusal_delay=0,  # the refusals' own timing, not a held answer
    )
    # every source takes a second to answer: admitted requests hold their place meanwhile
    urls = [
        "/_/w:10/plain/" + quote(origin.url(f"slow-headers?delay=1&n={i}"), safe="")
        for i in range(6)
    ]

    async def burst(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            return await asyncio.gather(*(http.get(url) for url in urls))

    with LiveServer(settings) as server:
        responses = asyncio.run(burst(server.url))
    shed = [r for r in responses if r.status_code == 503]
    assert len(shed) == 4, [r.status_code for r in responses]
    assert all(r.elapsed.total_seconds() < 0.5 for r in shed)
    # the two admitted ones got their source (b"slow", not an image) after the delay
    admitted = [r for r in responses if r.status_code != 503]
    assert [r.status_code for r in admitted] == [415, 415]
    assert all(r.elapsed.total_seconds() >= 0.9 for r in admitted)


def test_counters_are_batched_and_written_before_a_scrape() -> None:
    from prometheus_client import CollectorRegistry, Counter

    from imgsrv.metrics import BatchedCounts

    registry = CollectorRegistry()
    counter = Counter("batched_test_total", "test", ["kind"], registry=registry)
    batch = BatchedCounts()
    hits = counter.labels("hit")
    for _ in range(3):
        batch.add(hits)
    batch.add(counter.labels("miss"))
    assert registry.get_sample_value("batched_test_total", {"kind": "hit"}) == 0
    batch.flush()
    assert registry.get_sample_value("batched_test_total", {"kind": "hit"}) == 3
    assert registry.get_sample_value("batched_test_total", {"kind": "miss"}) == 1
    batch.flush()  # nothing pending: nothing added twice
    assert registry.get_sample_value("batched_test_total", {"kind": "hit"}) == 3
