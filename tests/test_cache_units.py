"""L1, circuit breaker, single-flight and recent-source units (no I/O)."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from dataclasses import dataclass

import pytest

from imgsrv.cache.breaker import CircuitBreaker
from imgsrv.cache.entry import CacheEntry, CorruptEntry
from imgsrv.cache.flight import SingleFlight
from imgsrv.cache.l1 import ITEM_OVERHEAD, MAX_TTL, L1Cache
from imgsrv.cache.recent import RecentSources


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(size: int, tag: str = "a") -> CacheEntry:
    return CacheEntry(b"x" * size, "image/webp", "webp", 10, 20, 1, f'"{tag}"')


def test_entry_round_trips_and_rejects_foreign_values() -> None:
    e = CacheEntry(b"\x00\xffdata", "image/png", "png", 3, 4, 2, '"e"')
    assert CacheEntry.decode(e.encode()) == e
    for bad in (
        b"",
        b"IMG1",
        b"XXXX\x00\x00\x00\x02{}",
        e.encode()[:10],
        b"IMG1\x00\x00\x00\x02[]",
    ):
        with pytest.raises(CorruptEntry):
            CacheEntry.decode(bad)


def test_l1_counts_what_an_item_really_costs_beside_its_image_bytes() -> None:
    # A full L1 of small thumbnails must stay within its byte budget: the per-item figure it
    # charges covers the entry, its ETag, the key and the indexes, as allocated.
    count = 5000
    images = [bytes([i % 251]) * 600 for i in range(count)]
    sources = [f"http://origin.example:8080/v/run-1-{i}/photo-1920.jpg" for i in range(count)]
    cache = L1Cache(10**9)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for image, source in zip(images, sources, strict=True):
            etag = '"' + hashlib.blake2b(image, digest_size=16).hexdigest() + '"'
            entry = CacheEntry(data=image, content_type="image/jpeg", format="jpeg",
                               width=32, height=21, pages=1, etag=etag)  # fmt: skip
            assert cache.put(f"w:300/f:webp/src:{source}", entry, source)
        per_item = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert 300 < per_item <= ITEM_OVERHEAD
    assert cache.bytes_in_use == count * (600 + ITEM_OVERHEAD)


def test_l1_hit_miss_and_ttl_capped_at_five_minutes() -> None:
    clock = Clock()
    cache = L1Cache(1_000_000, ttl=3600, clock=clock)
    assert cache.ttl == MAX_TTL
    cache.put("k", entry(100), "s")
    assert cache.get("k") == entry(100)
    clock.now += MAX_TTL - 1
    assert cache.get("k") is not None
    clock.now += 2
    assert cache.get("k") is None
    assert cache.bytes_in_use == 0 and len(cache) == 0


def test_l1_entries_past_their_ttl_leave_without_being_asked_for() -> None:
    clock = Clock()
    cache = L1Cache(10_000_000, ttl=60, clock=clock)
    for i in range(100):
        cache.put(f"old{i}", entry(100), "a")
    clock.now += 30
    cache.put("young", entry(100), "b")
    cache.put("old0", entry(100), "a")  # stored again: it lives from now on
    assert cache.expire() == 0
    clock.now += 31
    assert cache.expire() == 99
    assert len(cache) == 2 and cache.get("young") is not None and cache.get("old0") is not None
    assert cache.bytes_in_use == 2 * (100 + ITEM_OVERHEAD)
    cache.drop_source("a")
    clock.now += 60
    assert cache.expire() == 1 and len(cache) == 0 and cache.bytes_in_use == 0


def test_l1_expiry_records_stay_bounded_under_evictions() -> None:
    clock = Clock()
    cache = L1Cache(10 * (1000 + ITEM_OVERHEAD), max_item_bytes=10_000, clock=clock)
    for i in range(5000):  # each evicts an older one; their records are not due yet
        cache.put(f"k{i}", entry(1000), "s")
        cache.expire()
    assert len(cache) <= 10
    assert len(cache._expiries) <= 2 * len(cache) + 1024


def test_l1_byte_total_never_exceeds_the_cap_and_evicts_least_frequent() -> None:
    cache = L1Cache(10 * (1000 + ITEM_OVERHEAD), max_item_bytes=10_000)
    cache.put("hot", entry(1000), "s")
    for _ in range(5):
        assert cache.get("hot") is not None
    for i in range(100):
        cache.put(f"k{i}", entry(1000), "s")
        assert cache.bytes_in_use <= cache.max_bytes
    assert cache.get("hot") is not None  # frequently used: survives the flood
    assert cache.evictions >= 90
    assert len(cache) == 10


def test_l1_refuses_items_too_large_for_a_sensible_share() -> None:
    cache = L1Cache(16 * (1000 + ITEM_OVERHEAD))
    assert cache.max_item_bytes == 1000 + ITEM_OVERHEAD
    assert not cache.put("big", entry(1001), "s")
    assert cache.get("big") is None
    assert cache.put("small", entry(100), "s")


def test_l1_drop_source_removes_only_that_sources_variants() -> None:
    cache = L1Cache(1_000_000)
    for i in range(3):
        cache.put(f"a{i}", entry(10), "A")
    cache.put("b", entry(10), "B")
    assert cache.drop_source("A") == 3
    assert [cache.get(f"a{i}") for i in range(3)] == [None, None, None]
    assert cache.get("b") is not None
    assert cache.drop_source("A") == 0


def test_breaker_opens_after_failures_and_probes_after_reset() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, reset_after=5, clock=clock)
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()  # only one probe at a time
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


async def test_single_flight_shares_one_execution_and_survives_a_leaving_caller() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    first = asyncio.create_task(flight.run("k", work))
    await asyncio.sleep(0)
    others = [asyncio.create_task(flight.run("k", work)) for _ in range(49)]
    await asyncio.sleep(0)
    first.cancel()  # the leader's client goes away
    gate.set()
    results = await asyncio.gather(*others)
    assert calls == 1
    assert results == [(42, True)] * 49
    assert len(flight) == 0


async def test_single_flight_propagates_errors_to_every_waiter_and_forgets_them() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def boom() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("no")

    results = await asyncio.gather(
        *(flight.run("k", boom) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)
    assert len(flight) == 0

    async def ok() -> int:
        return 1

    assert await flight.run("k", ok) == (1, False)


@dataclass
class Download:
    data: bytes


async def test_recent_sources_fetch_once_then_hit_until_ttl() -> None:
    recent: RecentSources[Download] = RecentSources(max_bytes=1_000_000, ttl=60)
    fetches = 0

    async def fetch(source: str) -> Download:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.01)
        return Download(source.encode() * 10)

    got = await asyncio.gather(*(recent.get("src", fetch) for _ in range(3)))
    assert fetches == 1
    assert sorted(how for _, how in got) == ["fetched", "shared", "shared"]
    assert (await recent.get("src", fetch))[1] == "hit"
    recent.drop("src")
    assert (await recent.get("src", fetch))[1] == "fetched"
    assert fetches == 2


async def test_recent_sources_expire_without_being_used() -> None:
    recent: RecentSources[Download] = RecentSources(max_bytes=1_000_000, ttl=0.05)

    async def fetch(source: str) -> Download:
        return Download(b"x" * 1000)

    await recent.get("a", fetch)
    await recent.get("b", fetch)
    assert recent.bytes_in_use > 2000
    assert recent.expire() == 0  # still fresh
    await asyncio.sleep(0.08)
    assert recent.expire() == 2
    assert recent.bytes_in_use == 0


async def test_recent_sources_disabled_still_coalesces() -> None:
    recent: RecentSources[Download] = RecentSources(max_bytes=0, ttl=0)

    async def fetch(source: str) -> Download:
        await asyncio.sleep(0.01)
        return Download(b"x")

    hows = [how for _, how in await asyncio.gather(*(recent.get("s", fetch) for _ in range(2)))]
    assert sorted(hows) == ["fetched", "shared"]
    assert (await recent.get("s", fetch))[1] == "fetched"
