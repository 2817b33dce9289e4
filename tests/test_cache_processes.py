"""Cache behaviour across real ``imgsrv serve`` processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.origin import Origin
from tests.servers import ImgsrvProcess, RedisProcess

PHOTO = "files/orientation/Landscape_1.jpg"


def origin_env(**extra: str) -> dict[str, str]:
    return {"IMGSRV_ALLOW_SOURCE_NETWORKS": "127.0.0.0/8", "IMGSRV_WORKERS": "1", **extra}


async def _spread(bases: list[str], path: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as http:
        return await asyncio.gather(*(http.get(bases[i % len(bases)] + path) for i in range(count)))


def test_two_processes_sharing_redis_render_once(tmp_path: Path, origin: Origin) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    env = origin_env(IMGSRV_REDIS_URL=redis.url, IMGSRV_SOURCE_CACHE_TTL="0")
    try:
        with ImgsrvProcess(env) as a, ImgsrvProcess(env) as b:
            path = f"/_/w:320/bl:3/plain/{origin.url(PHOTO)}"
            responses = asyncio.run(_spread([a.url, b.url], path, 50))
            assert [r.status_code for r in responses] == [200] * 50
            assert len({r.content for r in responses}) == 1
            assert origin.count(PHOTO) == 1
            tiers = {r.headers["x-cache"] for r in responses}
            assert "l2" in tiers or len(tiers) == 1
    finally:
        redis.stop()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_default_starts_and_stops_its_own_redis_and_persists(
    tmp_path: Path, origin: Origin
) -> None:
    env = origin_env()  # no IMGSRV_REDIS_URL: the embedded default
    socket_path = tmp_path / "imgsrv-data" / "redis" / "redis.sock"
    path = f"/_/w:150/plain/{origin.url(PHOTO)}"
    with ImgsrvProcess(env, cwd=tmp_path) as server:
        assert socket_path.exists()
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["redis"] == "up"
        first = httpx.get(server.url + path)
        assert first.status_code == 200 and first.headers["x-cache"] == "miss"
        redis_pid = int((tmp_path / "imgsrv-data" / "redis" / "redis.pid").read_text())
        assert _pid_alive(redis_pid)
    assert server.process is not None and server.process.returncode == 0
    assert not _pid_alive(redis_pid), "embedded redis-server left running"
    assert not socket_path.exists()
    # a restarted imgsrv finds the image in the persisted (append-only) Redis data
    with ImgsrvProcess(env, cwd=tmp_path) as again:
        second = httpx.get(again.url + path)
        assert second.status_code == 200 and second.headers["x-cache"] == "l2"
        assert second.content == first.content
    assert origin.count(PHOTO) == 1


def test_purge_reaches_every_process(tmp_path: Path, origin: Origin) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    env = origin_env(IMGSRV_REDIS_URL=redis.url, IMGSRV_ADMIN_KEY="k3y")
    other = "files/orientation/Portrait_1.jpg"
    variants = [f"/_/{v}/plain/{origin.url(PHOTO)}" for v in ("w:100", "w:120/f:webp")]
    keep = f"/_/w:100/plain/{origin.url(other)}"
    try:
        with ImgsrvProcess(env) as a, ImgsrvProcess(env) as b:
            for server in (a, b):
                for path in [*variants, keep]:
                    assert httpx.get(server.url + path).status_code == 200
                assert httpx.get(server.url + variants[0]).headers["x-cache"] == "l1"
            purge = httpx.delete(
                a.url + "/v1/cache",
                params={"source": origin.url(PHOTO)},
                headers={"Authorization": "Bearer k3y"},
            )
            assert purge.status_code == 200 and purge.json()["deleted"] == 2
            time.sleep(0.5)  # pub/sub delivery to b
            for server in (b, a):
                tiers = [httpx.get(server.url + p).headers["x-cache"] for p in variants]
                # b goes first and must render again; a then finds b's fresh L2 entries
                assert tiers == (["miss", "miss"] if server is b else ["l2", "l2"]), tiers
                assert httpx.get(server.url + keep).headers["x-cache"] == "l1"
    finally:
        redis.stop()


@pytest.mark.parametrize("workers", ["2"])
def test_gunicorn_workers_share_the_embedded_redis(
    tmp_path: Path, origin: Origin, workers: str
) -> None:
    env = origin_env(IMGSRV_WORKERS=workers)
    with ImgsrvProcess(env, cwd=tmp_path) as server:
        path = f"/_/w:90/plain/{origin.url(PHOTO)}"
        responses = asyncio.run(_spread([server.url], path, 20))
        assert all(r.status_code == 200 for r in responses)
        assert origin.count(PHOTO) == 1
        assert httpx.get(server.url + "/readyz").json()["redis"] == "up"
        redis_pid = int((tmp_path / "imgsrv-data" / "redis" / "redis.pid").read_text())
    assert not _pid_alive(redis_pid), "embedded redis-server left running"
    assert not (tmp_path / "imgsrv-data" / "redis" / "redis.sock").exists()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _l1_bytes(base: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith("imgsrv_l1_bytes "):
            return float(line.split()[1])
    raise AssertionError("imgsrv_l1_bytes not exported")


# What a server process needs besides L1: Python, libvips and its thread pool, sockets.
RSS_MARGIN = 150 * 1024 * 1024


def test_l1_flood_keeps_bytes_under_cap_and_rss_under_cap_plus_margin(
    tmp_path: Path, origin: Origin
) -> None:
    cap = 16 * 1024 * 1024
    env = origin_env(IMGSRV_L1_MAX_BYTES=str(cap), IMGSRV_EMBEDDED_REDIS="0")
    with ImgsrvProcess(env, cwd=tmp_path) as server:
        assert server.process is not None
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for width in range(400, 520):
                # distinct lossless outputs of 0.3-0.6 MB each: ~50 MB offered to a 16 MB cache
                r = http.get(f"/_/w:{width}/f:png/plain/{origin.url(PHOTO)}")
                assert r.status_code == 200
                assert _l1_bytes(server.url) <= cap
            assert http.get(f"/_/w:519/f:png/plain/{origin.url(PHOTO)}").headers["x-cache"] == "l1"
        rss = _rss_bytes(server.process.pid)
        print(f"RSS after flood: {rss / 2**20:.0f} MiB (cap {cap / 2**20:.0f} MiB)")
        assert rss <= cap + RSS_MARGIN
