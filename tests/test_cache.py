"""The two-tier cache against a real redis-server and a real origin that counts requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis as redis_sync
from starlette.testclient import TestClient

from imgsrv.app import create_app
from imgsrv.cache.l2 import L2Cache
from imgsrv.config import Settings, load_settings
from imgsrv.render import cache_key
from imgsrv.spec import DAY
from imgsrv.urls import parse_path
from tests.conftest import LiveServer
from tests.origin import Origin
from tests.servers import RedisProcess

PHOTO = "files/orientation/Landscape_1.jpg"


def cache_settings(redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "allow_source_networks": ("127.0.0.0/8",),
        "access_log": False,
        "source_cache_ttl": 0.0,  # every render downloads unless it is coalesced
        "admin_key": "admin-secret",
    }
    values.update(overrides)
    return load_settings({}, **values)


def image_url(origin: Origin, options: str = "w:200", path: str = PHOTO) -> str:
    return f"/_/{options}/plain/{origin.url(path)}"


def l2_key(settings: Settings, url: str) -> str:
    spec = parse_path(url.encode(), settings).spec
    l2 = L2Cache(redis_sync.Redis(), prefix=settings.redis_prefix)  # only for naming
    return l2.image_key(cache_key(spec, frozenset()), spec.source)


def test_miss_then_l1_then_l2_from_a_new_process(
    redis_server: RedisProcess, origin: Origin
) -> None:
    settings = cache_settings(redis_server.url)
    url = image_url(origin)
    with TestClient(create_app(settings)) as first:
        a = first.get(url)
        b = first.get(url)
    assert (a.status_code, a.headers["x-cache"]) == (200, "miss")
    assert (b.status_code, b.headers["x-cache"]) == (200, "l1")
    with TestClient(create_app(settings)) as second:  # empty L1, same Redis
        c = second.get(url)
        d = second.get(url)
    assert c.headers["x-cache"] == "l2" and d.headers["x-cache"] == "l1"
    assert a.content == b.content == c.content == d.content
    assert a.headers["etag"] == c.headers["etag"]
    assert origin.count(PHOTO) == 1


def test_l2_expiry_follows_the_ttl_option_and_a_hit_refreshes_it(
    redis_server: RedisProcess, origin: Origin
) -> None:
    settings = cache_settings(redis_server.url)
    client = redis_sync.Redis.from_url(redis_server.url)
    default_url, long_url = image_url(origin, "w:100"), image_url(origin, "w:100/ttl:3d")
    # ttl does not change the bytes, so both URLs share one entry
    key = l2_key(settings, long_url)
    assert l2_key(settings, default_url) == key
    with TestClient(create_app(settings)) as app:
        assert app.get(long_url).headers["x-cache"] == "miss"
    assert abs(client.ttl(key) - 3 * DAY) <= 5
    client.expire(key, 100)
    with TestClient(create_app(settings)) as fresh:  # empty L1: the hit comes from L2
        assert fresh.get(long_url).headers["x-cache"] == "l2"
    assert abs(client.ttl(key) - 3 * DAY) <= 5
    with TestClient(create_app(settings)) as fresh:
        assert fresh.get(default_url).headers["x-cache"] == "l2"
    assert abs(client.ttl(key) - DAY) <= 5
    raw = client.get(key)
    assert raw is not None and raw.startswith(b"IMG1")
    # the per-source index lives as long as the longest entry
    index = L2Cache(client, prefix=settings.redis_prefix).source_key(origin.url(PHOTO))  # type: ignore[arg-type]
    assert key.encode() in client.smembers(index)
    assert client.ttl(index) >= DAY - 5


async def _burst(base: str, urls: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        return await asyncio.gather(*(http.get(u) for u in urls))


def test_fifty_concurrent_identical_misses_cost_one_origin_request(
    redis_server: RedisProcess, origin: Origin
) -> None:
    url = image_url(origin, "w:300/bl:2")
    with LiveServer(cache_settings(redis_server.url)) as server:
        responses = asyncio.run(_burst(server.url, [url] * 50))
    assert [r.status_code for r in responses] == [200] * 50
    assert len({r.content for r in responses}) == 1
    assert origin.count(PHOTO) == 1


def test_three_variants_of_one_source_cost_one_download(
    redis_server: RedisProcess, origin: Origin
) -> None:
    urls = [image_url(origin, o) for o in ("w:100", "w:200/f:webp", "rs:cover:50:50/f:png")]
    with LiveServer(cache_settings(redis_server.url, source_cache_ttl=30.0)) as server:
        responses = asyncio.run(_burst(server.url, urls))
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert [r.headers["x-cache"] for r in responses] == ["miss"] * 3
        assert origin.count(PHOTO) == 1
        # a variant asked for a moment later still reuses the recent download
        later = httpx.get(server.url + image_url(origin, "w:64"))
        assert later.status_code == 200 and origin.count(PHOTO) == 1


def test_redis_killed_mid_load_gives_no_5xx_and_l2_comes_back(
    redis_server: RedisProcess, origin: Origin
) -> None:
    settings = cache_settings(redis_server.url, redis_breaker_reset=0.5, source_cache_ttl=30.0)
    statuses: list[int] = []
    stop = threading.Event()

    def load(base: str) -> None:
        i = 0
        with httpx.Client(base_url=base, timeout=30) as http:
            while not stop.is_set() and i < 2000:
                # a mix of repeats (cache hits) and new variants (renders)
                width = 20 + (i % 40) if i % 3 else 20 + i
                statuses.append(http.get(image_url(origin, f"w:{width}")).status_code)
                i += 1

    with LiveServer(settings) as server:
        worker = threading.Thread(target=load, args=(server.url,))
        worker.start()
        time.sleep(1.0)
        redis_server.kill()
        time.sleep(2.0)
        during = len(statuses)
        down = httpx.get(server.url + "/readyz")
        redis_server.start()
        time.sleep(1.5)
        stop.set()
        worker.join(30)
        # still ready: Redis is shared by every instance, so its outage must not take them all
        # out of a balancer at once
        assert down.status_code == 200
        assert down.json()["status"] == "degraded" and down.json()["redis"] == "down"
        assert during > 10
        assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
        # L2 works again by itself: a new render is stored in the restarted Redis
        url = image_url(origin, "w:777")
        assert httpx.get(server.url + url).headers["x-cache"] == "miss"
        deadline = time.monotonic() + 5
        client = redis_sync.Redis.from_url(redis_server.url)
        while not client.exists(l2_key(settings, url)) and time.monotonic() < deadline:
            time.sleep(0.2)
            httpx.get(
                server.url + image_url(origin, f"w:{int(time.monotonic() * 1000) % 500 + 30}")
            )
        assert client.exists(l2_key(settings, url)) or client.dbsize() > 0
        assert httpx.get(server.url + "/readyz").status_code == 200


def test_redis_that_never_answers_costs_bounded_latency(origin: Origin, tmp_path: Path) -> None:
    # A socket that accepts nothing: every Redis call must give up quickly.
    settings = cache_settings(f"unix://{tmp_path}/nothing.sock", redis_timeout=0.1)
    with TestClient(create_app(settings)) as client:
        started = time.perf_counter()
        for width in range(40, 60):
            r = client.get(image_url(origin, f"w:{width}"))
            assert r.status_code == 200 and r.headers["x-cache"] == "miss"
        assert time.perf_counter() - started < 20
        assert client.get(image_url(origin, "w:40")).headers["x-cache"] == "l1"
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"


def test_l1_flood_stays_under_its_byte_cap(redis_server: RedisProcess, origin: Origin) -> None:
    cap = 1024 * 1024
    settings = cache_settings(redis_server.url, l1_max_bytes=cap, source_cache_ttl=30.0)
    app = create_app(settings)
    with TestClient(app) as client:
        l1 = app.state.renderer.l1
        for width in range(200, 330):
            r = client.get(image_url(origin, f"w:{width}/q:90"))  # 15-40 KB each
            assert r.status_code == 200
            assert l1.bytes_in_use <= cap
        assert l1.evictions > 0
        assert len(l1) > 1


def test_purge_drops_every_variant_of_a_source_everywhere(
    redis_server: RedisProcess, origin: Origin
) -> None:
    settings = cache_settings(redis_server.url)
    other = "files/orientation/Portrait_1.jpg"
    variants = ["w:100", "w:150/f:webp", "rs:cover:40:40"]
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        for client in (a, b):
            for v in variants:
                assert client.get(image_url(origin, v)).status_code == 200
            assert client.get(image_url(origin, "w:90", other)).status_code == 200
        assert all(a.get(image_url(origin, v)).headers["x-cache"] == "l1" for v in variants)
        assert a.delete(f"/v1/cache?source={origin.url(PHOTO)}").status_code == 401
        assert (
            a.delete(
                f"/v1/cache?source={origin.url(PHOTO)}", headers={"Authorization": "Bearer nope"}
            ).status_code
            == 401
        )
        r = a.delete(
            f"/v1/cache?source={origin.url(PHOTO)}",
            headers={"Authorization": "Bearer admin-secret"},
        )
        assert r.status_code == 200 and r.json()["deleted"] == 3
        keys = [
            cache_key(parse_path(image_url(origin, v).encode(), settings).spec, frozenset())
            for v in variants
        ]
        redis_keys = [l2_key(settings, image_url(origin, v)) for v in variants]
        client = redis_sync.Redis.from_url(redis_server.url)
        assert client.exists(*redis_keys) == 0
        # b learns of the purge through pub/sub
        deadline = time.monotonic() + 5
        while any(b.app.state.renderer.l1.get(k) for k in keys) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(b.app.state.renderer.l1.get(k) for k in keys)
        for v in variants:
            assert a.get(image_url(origin, v)).headers["x-cache"] == "miss", v
            # b re-reads what a just rendered: nothing stale was left in its memory
            assert b.get(image_url(origin, v)).headers["x-cache"] == "l2", v
        for client_ in (a, b):
            assert client_.get(image_url(origin, "w:90", other)).headers["x-cache"] == "l1"


def test_while_overloaded_memory_hits_are_served_and_new_urls_refused_before_redis(
    redis_server: RedisProcess, origin: Origin
) -> None:
    settings = cache_settings(redis_server.url, transform_threads=1, max_queue=1, refusal_delay=0)
    client = redis_sync.Redis.from_url(redis_server.url)
    cached = image_url(origin, "w:40")
    slow = [
        "/_/w:10/plain/" + origin.url(f"slow-headers?delay=1.5&n={i}").replace("?", "%3F")
        for i in range(2)
    ]
    new = image_url(origin, "w:41")

    def redis_reads() -> int:
        stats = client.info("commandstats")
        return sum(
            int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_get", "cmdstat_getex")
        )

    async def scenario(
        base: str,
    ) -> tuple[list[httpx.Response], httpx.Response, httpx.Response, int]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            assert (await http.get(cached)).status_code == 200
            filling = [asyncio.create_task(http.get(url)) for url in slow]
            await asyncio.sleep(0.7)  # both places are taken while their sources trickle in
            reads = redis_reads()
            hit = await http.get(cached)
            refused = await http.get(new)
            reads = redis_reads() - reads
            return await asyncio.gather(*filling), hit, refused, reads

    with LiveServer(settings) as server:
        filled, hit, refused, reads = asyncio.run(scenario(server.url))
    assert [r.status_code for r in filled] == [415, 415]  # b"slow" is not an image
    assert hit.status_code == 200 and hit.headers["x-cache"] == "l1"
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.elapsed.total_seconds() < 0.2
    assert reads == 0  # neither the memory hit nor the refusal asked Redis
    assert origin.count(PHOTO) == 1  # the new URL never reached the origin


def test_places_are_taken_before_asking_redis_and_always_given_back(
    redis_server: RedisProcess, origin: Origin
) -> None:
    settings = cache_settings(redis_server.url, transform_threads=1, max_queue=1)  # 2 places
    client = redis_sync.Redis.from_url(redis_server.url)
    slow = [
        "/_/w:10/plain/" + origin.url(f"slow-headers?delay=1&n={i}").replace("?", "%3F")
        for i in range(6)
    ]
    cached = image_url(origin, "w:30")
    missing = image_url(origin, "w:30", "files/nope.jpg")

    def redis_reads() -> int:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_getex", {}).get("calls", 0))  # L2 lookups only

    async def burst(base: str) -> tuple[list[httpx.Response], int]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            reads = redis_reads()
            responses = await asyncio.gather(*(http.get(url) for url in slow))
            reads = redis_reads() - reads
            # L2 hits, shared renders and failed sources give their places back too
            assert (await http.get(cached)).status_code == 200
            with_l2 = await asyncio.gather(*(http.get(cached + f"?v={i}") for i in range(3)))
            assert {r.status_code for r in with_l2} == {200}
            assert (await http.get(missing)).status_code == 404
            return responses, reads

    with LiveServer(settings) as server:
        responses, reads = asyncio.run(burst(server.url))
        pool = server.server.config.app.state.renderer.pool
        assert pool.admitted == 0
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [415, 415, 503, 503, 503, 503]  # b"slow" is not an image
    assert reads == 2  # the four refused requests never asked Redis


def test_requests_joining_a_render_under_way_need_no_place_of_their_own(
    redis_server: RedisProcess, origin: Origin
) -> None:
    settings = cache_settings(redis_server.url, transform_threads=1, max_queue=1)  # 2 places
    url = image_url(origin, "w:300/bl:3")
    with LiveServer(settings) as server:
        responses = asyncio.run(_burst(server.url, [url] * 20))
        assert server.server.config.app.state.renderer.pool.admitted == 0
    assert [r.status_code for r in responses] == [200] * 20
    assert origin.count(PHOTO) == 1


def test_a_miss_costs_two_redis_round_trips_and_an_l2_hit_one(
    redis_server: RedisProcess, origin: Origin
) -> None:
    settings = cache_settings(redis_server.url, job_workers=0)
    client = redis_sync.Redis.from_url(redis_server.url)
    l2_keys = f"{settings.redis_prefix}:v1:{{"  # image, index and lock keys (not jobs, egress)

    def commands_during(action: Callable[[], object]) -> list[str]:
        """The commands on L2 keys clients sent while ``action`` ran (not scripts' own)."""
        seen: list[str] = []
        with client.monitor() as monitor:
            ready = threading.Event()

            def listen() -> None:
                ready.set()
                for event in monitor.listen():
                    command = str(event["command"])
                    if command == "PING end-of-test":
                        return
                    name = command.split(" ", 1)[0].upper()
                    if event.get("client_type") != "lua" and l2_keys in command:
                        seen.append(name)

            thread = threading.Thread(target=listen)
            thread.start()
            ready.wait()
            time.sleep(0.2)
            action()
            redis_sync.Redis.from_url(redis_server.url).execute_command("PING", "end-of-test")
            thread.join(10)
        return seen

    with TestClient(create_app(settings)) as app:
        assert app.get(image_url(origin, "w:50")).status_code == 200  # scripts now loaded
        miss = commands_during(lambda: app.get(image_url(origin, "w:51")))
    assert miss == ["EVALSHA", "EVALSHA"]  # lookup-or-lock, store-and-unlock
    with TestClient(create_app(settings)) as fresh:  # empty L1: the entry comes from L2
        hit = commands_during(lambda: fresh.get(image_url(origin, "w:51")))
    assert hit == ["EVALSHA"]
