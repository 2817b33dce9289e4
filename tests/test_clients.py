"""Who a request comes from (API key tenant, else address), and that the pool takes turns by it."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from imgsrv.clients import WINDOW_SECONDS, client_address, client_key, request_address
from imgsrv.routes.images import RequestHeaders, request_client
from tests.conftest import LiveServer, corpus_settings
from tests.origin import Origin

PROXIES = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "127.0.0.1/32"))


def test_an_api_key_tenant_is_the_client_wherever_it_comes_from() -> None:
    assert client_key("shop", "203.0.113.7") == "key:shop"
    assert client_key("shop", "198.51.100.1") == "key:shop"


def test_an_address_names_a_client_within_a_one_hour_window() -> None:
    start = 1_764_547_200.0  # 2025-12-01T00:00:00Z, a window boundary
    assert start % WINDOW_SECONDS == 0
    first = client_key(None, "203.0.113.7", start)
    assert first == client_key(None, "203.0.113.7", start + WINDOW_SECONDS - 1)
    assert first != client_key(None, "203.0.113.7", start + WINDOW_SECONDS)
    assert first != client_key(None, "203.0.113.8", start)
    assert first.startswith("ip:203.0.113.7@")


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    # Any client can write the header itself: from an untrusted peer it is ignored.
    assert client_address("203.0.113.7", ["198.51.100.1"], PROXIES) == "203.0.113.7"
    assert client_address("203.0.113.7", ["198.51.100.1"], ()) == "203.0.113.7"
    # From a trusted proxy, the nearest forwarded address that is not a proxy.
    assert client_address("10.1.1.1", ["198.51.100.1"], PROXIES) == "198.51.100.1"
    assert client_address("10.1.1.1", ["6.6.6.6, 198.51.100.1, 10.2.2.2"], PROXIES) == (
        "198.51.100.1"
    )
    # Several headers are one list, in order.
    assert client_address("10.1.1.1", ["6.6.6.6", "198.51.100.1"], PROXIES) == "198.51.100.1"
    # Only proxies all the way: the leftmost one.
    assert client_address("10.1.1.1", ["10.9.9.9, 10.2.2.2"], PROXIES) == "10.9.9.9"
    # No header: the proxy itself.
    assert client_address("10.1.1.1", [], PROXIES) == "10.1.1.1"
    # Garbage stops at the last address a trusted proxy vouched for.
    assert client_address("10.1.1.1", ["198.51.100.1, junk, 10.2.2.2"], PROXIES) == "10.2.2.2"
    # Ports as some proxies write them.
    assert client_address("10.1.1.1", ["198.51.100.1:4711"], PROXIES) == "198.51.100.1"
    assert client_address("10.1.1.1", ["[2001:db8::1]:4711"], PROXIES) == "2001:db8::/64"


def test_ipv6_clients_count_per_64() -> None:
    a = client_address("2001:db8:1:2::1", [], ())
    b = client_address("2001:db8:1:2:ffff::99", [], ())
    assert a == b == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:3::1", [], ()) != a
    assert client_address("::ffff:198.51.100.1", [], ()) == "198.51.100.1"
    # The access log shows the address itself, not the /64.
    assert str(request_address("2001:db8:1:2::1", [], ())) == "2001:db8:1:2::1"


def test_request_client_prefers_the_tenant_then_the_address() -> None:
    scope = {"client": ("10.1.1.1", 5000), "headers": [(b"x-forwarded-for", b"198.51.100.1")]}
    headers = RequestHeaders.of(scope)
    assert request_client(scope, headers, "shop", PROXIES) == "key:shop"
    assert request_client(scope, headers, None, PROXIES).startswith("ip:198.51.100.1@")
    assert request_client(scope, headers, None, ()).startswith("ip:10.1.1.1@")


@pytest.fixture
def slow_server(corpus_dir: Path) -> object:
    return corpus_settings(
        transform_threads=1,
        max_queue=8,
        allow_source_networks=("127.0.0.0/8",),
        api_keys=("shop:k3y-shop",),
        trusted_proxies=("127.0.0.1/32",),
    )


def test_requests_wait_as_the_client_they_come_from(slow_server: object, origin: Origin) -> None:
    def url(i: int) -> str:
        return "/_/w:10/plain/" + quote(origin.url(f"slow-headers?delay=1&n={i}"), safe="")

    sent = [
        ({"Authorization": "Bearer k3y-shop"}, 0),
        ({"Authorization": "Bearer k3y-shop", "X-Forwarded-For": "198.51.100.1"}, 1),
        ({"X-Forwarded-For": "198.51.100.1"}, 2),
        ({"X-Forwarded-For": "6.6.6.6, 198.51.100.2"}, 3),
        ({"Authorization": "Bearer wrong-key"}, 4),  # not a tenant: its address counts
    ]

    async def scenario(base: str, pool: object) -> dict[str, int]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            tasks = [asyncio.create_task(http.get(url(i), headers=h)) for h, i in sent]
            await asyncio.sleep(0.5)  # every request holds its place while its source trickles
            waiting: dict[str, int] = pool.waiting_by_client()  # type: ignore[attr-defined]
            await asyncio.gather(*tasks)
            return waiting

    with LiveServer(slow_server) as server:  # type: ignore[arg-type]
        pool = server.server.config.app.state.renderer.pool
        waiting = asyncio.run(scenario(server.url, pool))
    window = int(time.time() // WINDOW_SECONDS)
    assert waiting == {
        "key:shop": 2,
        f"ip:198.51.100.1@{window}": 1,
        f"ip:198.51.100.2@{window}": 1,
        f"ip:127.0.0.1@{window}": 1,
    }


def test_a_refusal_is_held_back_and_carries_retry_after(corpus_dir: Path, origin: Origin) -> None:
    settings = corpus_settings(
        transform_threads=1,
        max_queue=1,  # two places: both taken by requests whose sources trickle in
        allow_source_networks=("127.0.0.0/8",),
        refusal_delay=0.6,
        retry_after=2,
    )
    def url(n: str) -> str:
        return "/_/w:10/plain/" + quote(origin.url(f"slow-headers?delay=1.5&n={n}"), safe="")

    async def scenario(base: str) -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            busy = [asyncio.create_task(http.get(url(n))) for n in ("a", "b")]
            await asyncio.sleep(0.2)
            refused = await http.get(url("refused"))
            return await asyncio.gather(*busy), refused

    with LiveServer(settings) as server:
        admitted, second = asyncio.run(scenario(server.url))
    # b"slow" is not an image, but both had their places
    assert [r.status_code for r in admitted] == [415, 415]
    assert second.status_code == 503
    assert second.headers["content-type"] == "application/problem+json"
    assert int(second.headers["retry-after"]) in (2, 3)
    assert 0.55 <= second.elapsed.total_seconds() < 1.2  # held, not answered at once
    assert origin.count("/slow-headers") == 2  # the refused one never reached the origin
