"""The egress budget: bytes served counted in Redis for every instance, and saver mode."""

from __future__ import annotations

import calendar
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from imgsrv import metrics
from imgsrv.config import Settings, load_settings
from imgsrv.egress import EgressMeter, day_field, month_key, month_of, saver_mode
from imgsrv.jobs.auth import ApiKeys, bearer_tenant
from imgsrv.runtime import transform_options
from imgsrv.transform import transform
from imgsrv.urls import UrlParser
from tests.corpus import IMAGES
from tests.origin import Origin
from tests.servers import ImgsrvProcess, RedisProcess

PHOTO = "files/orientation/Landscape_1.jpg"
NOV_30_LATE = calendar.timegm((2026, 11, 30, 23, 59, 58, 0, 0, 0))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def meter(settings: Settings, redis: Redis | None, clock: Clock) -> EgressMeter:
    return EgressMeter(settings, redis, saver_mode(transform_options(settings), settings), clock)


def gauge(value: Any) -> float:
    return float(value._value.get())


# --------------------------------------------------------------------------- in one process


async def test_served_bytes_reach_the_months_hash_in_one_flush(redis_server: RedisProcess) -> None:
    redis = Redis.from_url(redis_server.url)
    settings = load_settings({}, egress_monthly_budget="1MB")
    egress = meter(settings, redis, Clock(NOV_30_LATE))
    for _ in range(3):
        egress.served(1000, "webp", "shop", "miss", 12.5)
    egress.served(500, "jpeg", "anonymous", "l1", 0.0)
    await egress.flush()
    stored = {
        k.decode(): int(v) for k, v in (await redis.hgetall(month_key("imgsrv", "2026-11"))).items()
    }
    assert stored == {
        "bytes": 3500,
        day_field(30, "bytes"): 3500,
        day_field(30, "format:webp"): 3000,
        day_field(30, "format:jpeg"): 500,
        day_field(30, "tenant:shop"): 3000,
        day_field(30, "tenant:anonymous"): 500,
        day_field(30, "cache:miss"): 3,
        day_field(30, "cache:l1"): 1,
        day_field(30, "transform_us"): 37_500,
    }
    assert 0 < await redis.ttl(month_key("imgsrv", "2026-11")) <= 400 * 86_400
    assert egress.month_bytes == 3500 and gauge(metrics.EGRESS_MONTH_BYTES) == 3500
    await egress.flush()  # nothing new: nothing added, the total read again
    assert int(await redis.hget(month_key("imgsrv", "2026-11"), "bytes")) == 3500
    metrics.BATCHED.flush()
    assert gauge(metrics.EGRESS_BYTES.labels("webp", "shop")) >= 3000
    await redis.aclose()


async def test_saver_mode_follows_the_shared_total_and_ends_with_the_month(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    redis = Redis.from_url(redis_server.url)
    settings = load_settings({}, egress_monthly_budget="10kB", egress_saver_at=0.6)
    clock = Clock(NOV_30_LATE)
    first, second = meter(settings, redis, clock), meter(settings, redis, clock)
    first.served(5000, "webp", "anonymous", "miss", 1.0)
    await first.flush()
    await second.flush()
    assert not first.saver.active and not second.saver.active  # 5 kB < 6 kB
    second.served(1500, "webp", "anonymous", "l1", 0.0)
    with caplog.at_level(logging.INFO, logger="imgsrv.egress"):
        await second.flush()
        await first.flush()  # learns the other's bytes from Redis
    assert first.saver.active and second.saver.active
    assert first.saver.options().webp_quality == settings.webp_quality - 15
    assert gauge(metrics.EGRESS_SAVER) == 1
    on = [r for r in caplog.records if getattr(r, "event", "") == "saver_on"]
    assert len(on) == 2 and on[0].egress_bytes == 6500 and on[0].saver_at_bytes == 6000
    since = await redis.hget(month_key("imgsrv", "2026-11"), "saver_since")
    assert since is not None and int(since) == int(NOV_30_LATE)

    clock.now += 3  # 1 December
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imgsrv.egress"):
        await first.flush()
    assert not first.saver.active and first.month == "2026-12" and first.month_bytes == 0
    (off,) = [r for r in caplog.records if getattr(r, "event", "") == "saver_off"]
    assert off.reason == "a new month began" and off.month == "2026-12"
    assert first.saver.options() == first.saver.normal
    await redis.aclose()


async def test_counts_wait_out_a_redis_outage(redis_server: RedisProcess) -> None:
    redis = Redis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    egress = meter(load_settings({}), redis, Clock(NOV_30_LATE))
    egress.served(700, "png", "anonymous", "miss", 2.0)
    redis_server.stop()
    await egress.flush()  # fails: kept for later
    egress.served(300, "png", "anonymous", "l2", 0.0)
    redis_server.start()
    await egress.flush()
    assert egress.month_bytes == 1000
    assert (
        int(await redis.hget(month_key("imgsrv", "2026-11"), day_field(30, "format:png"))) == 1000
    )
    await redis.aclose()


async def test_without_redis_a_process_follows_its_own_count() -> None:
    settings = load_settings({}, egress_monthly_budget="1kB")
    egress = meter(settings, None, Clock(NOV_30_LATE))
    egress.served(800, "jpeg", "anonymous", "miss", 1.0)
    await egress.flush()
    assert egress.month_bytes == 800 and egress.saver.active


def test_saver_mode_lowers_default_qualities_and_picks_its_auto_formats() -> None:
    settings = load_settings(
        {}, jpeg_quality=80, avif_quality=10, auto_formats=("webp",), egress_saver_quality_step=15
    )
    mode = saver_mode(transform_options(settings), settings)
    assert mode.normal.auto_formats == ("webp",)
    assert (mode.smaller.jpeg_quality, mode.smaller.avif_quality) == (65, 1)
    assert mode.smaller.auto_formats == ("avif", "webp")
    assert mode.smaller.max_source_megapixels == mode.normal.max_source_megapixels


def test_month_of_is_utc() -> None:
    assert month_of(NOV_30_LATE) == "2026-11" and month_of(NOV_30_LATE + 3) == "2026-12"


def test_the_tenant_is_that_of_a_valid_bearer_key_only() -> None:
    keys = ApiKeys(["shop:k3y-shop", "blog:k3y-blog"])
    assert bearer_tenant(keys, [(b"authorization", b"Bearer k3y-blog")]) == "blog"
    assert bearer_tenant(keys, [(b"authorization", b"bearer  k3y-shop ")]) == "shop"
    assert bearer_tenant(keys, [(b"authorization", b"Bearer wrong")]) is None
    assert bearer_tenant(keys, [(b"authorization", b"Basic k3y-shop")]) is None
    assert bearer_tenant(keys, [(b"accept", b"*/*")]) is None
    assert bearer_tenant(ApiKeys([]), [(b"authorization", b"Bearer k3y-shop")]) is None


# --------------------------------------------------------------------------- two processes


def saver_active(server: ImgsrvProcess) -> bool:
    text = httpx.get(server.url + "/metrics").text
    return "imgsrv_egress_saver_active 1.0" in text


def wait_until(condition: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def json_lines(process: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    assert process.stderr is not None
    lines = process.stderr.read().decode().splitlines()
    return [orjson.loads(line) for line in lines if line.startswith("{")]


def normal_render(path: str, origin: Origin, settings: Settings) -> bytes:
    """What imgsrv renders for ``path`` with the normal options, without a server."""
    spec = UrlParser(settings).path(path.encode()).spec
    data = (IMAGES / PHOTO.removeprefix("files/")).read_bytes()
    return transform(data, spec, frozenset(), transform_options(settings)).data


def test_a_tiny_budget_crossed_across_two_processes(tmp_path: Path, origin: Origin) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    env = {
        "IMGSRV_WORKERS": "1",
        "IMGSRV_REDIS_URL": redis.url,
        "IMGSRV_ALLOW_SOURCE_NETWORKS": "127.0.0.0/8",
        "IMGSRV_EGRESS_MONTHLY_BUDGET": "200kB",
        "IMGSRV_ADMIN_KEY": "adm1n",
        "IMGSRV_API_KEYS": "shop:k3y-shop",
    }
    settings = load_settings(env)
    photo = origin.url(PHOTO)
    cached, fresh = f"/_/w:600/f:webp/plain/{photo}", f"/_/w:640/f:webp/plain/{photo}"
    try:
        a, b = ImgsrvProcess(env).start(), ImgsrvProcess(env).start()
        try:
            before = httpx.get(a.url + cached)
            assert before.status_code == 200 and before.headers["x-cache"] == "miss"
            assert before.content == normal_render(cached, origin, settings)
            # Only a serves, until the month's count passes 60% of the budget (120 kB).
            shop = {"Authorization": "Bearer k3y-shop"}
            for _ in range(int(120_000 / len(before.content)) + 1):
                assert httpx.get(a.url + cached, headers=shop).status_code == 200
            assert wait_until(lambda: saver_active(a)), "a did not switch saver mode on"
            assert wait_until(lambda: saver_active(b)), "b did not learn of the shared count"
            month_bytes = re.search(
                r"^imgsrv_egress_month_bytes (\S+)$", httpx.get(b.url + "/metrics").text, re.M
            )
            assert month_bytes is not None and float(month_bytes[1]) >= 120_000

            # What is cached stays as it is: the same bytes, the same ETag.
            again = httpx.get(b.url + cached)
            assert again.headers["x-cache"] == "l2" and again.content == before.content
            assert again.headers["etag"] == before.headers["etag"]
            # A new URL renders smaller, with the saver options exactly.
            new = httpx.get(b.url + fresh)
            assert new.status_code == 200 and new.headers["x-cache"] == "miss"
            normal = normal_render(fresh, origin, settings)
            assert len(new.content) < 0.9 * len(normal)
            spec = UrlParser(settings).path(fresh.encode()).spec
            data = (IMAGES / PHOTO.removeprefix("files/")).read_bytes()
            smaller = saver_mode(transform_options(settings), settings).smaller
            assert new.content == transform(data, spec, frozenset(), smaller).data
            # A purge re-renders the cached URL in saver mode.
            purged = httpx.delete(
                a.url + "/v1/cache",
                params={"source": photo},
                headers={"Authorization": "Bearer adm1n"},
            )
            assert purged.status_code == 200
            time.sleep(0.5)  # pub/sub to b
            rendered = httpx.get(b.url + cached)
            assert rendered.headers["x-cache"] == "miss"
            assert len(rendered.content) < 0.9 * len(before.content)
        finally:
            a.stop()
            b.stop()
        logs = {"a": json_lines(a.process), "b": json_lines(b.process)}  # type: ignore[arg-type]
        for name, lines in logs.items():
            (on,) = [line for line in lines if line.get("event") == "saver_on"]
            assert on["msg"] == "egress saver mode on" and on["month"] == month_of(time.time())
            assert on["egress_bytes"] >= on["saver_at_bytes"] == 120_000, name
            events = [line["event"] for line in lines if line.get("logger") == "imgsrv.instance"]
            assert events == ["start", "drain", "stop"], name
            start = next(line for line in lines if line.get("event") == "start")
            assert start["egress_budget_bytes"] == 200_000 and start["redis"] == "configured"
            drain = next(line for line in lines if line.get("event") == "drain")
            assert drain["signal"] == "SIGTERM" and drain["instance"] == start["instance"]

        # The review from the same counters.
        review = subprocess.run(
            [sys.executable, "-m", "imgsrv.cli", "report", "--chart", str(tmp_path / "r.png")],
            env={**a.env, "IMGSRV_REDIS_URL": redis.url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert review.returncode == 0, review.stderr
        assert re.search(r"\| Monthly budget \| 200\.0 kB \(\d+\.\d% used\) \|", review.stdout)
        assert re.search(r"\| Saver mode \(from 120\.0 kB\) \| on since ", review.stdout)
        assert re.search(r"\| shop \| \d+\.\d kB", review.stdout)
        assert re.search(r"\| L1 \(memory\) hit ratio \| [1-9]\d\.\d% \|", review.stdout)
        assert (tmp_path / "r.png").stat().st_size > 1000
    finally:
        redis.stop()
