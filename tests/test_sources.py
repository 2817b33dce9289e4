"""Source fetching against a real HTTP origin on 127.0.0.1: limits, errors, SSRF guard, local://."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from imgsrv.config import Settings
from imgsrv.errors import (
    ForbiddenSource,
    InvalidSource,
    SourceError,
    SourceNotFound,
    SourceTimeout,
    SourceTooLarge,
)
from imgsrv.sources import (
    GuardedNetworkBackend,
    GuardedTransport,
    SourceBytes,
    SourceFetcher,
    address_allowed,
    resolve_source,
)
from imgsrv.sources.http1 import Http1Connection, open_tcp
from tests.origin import (  # noqa: F401  (fixture)
    IMAGES_DIR,
    Origin,
    OriginRequestHandler,
    origin_fixture,
)

TINY_JPEG = "jpeg/baseline-tiny-nometa.jpg"
LOOPBACK = ("127.0.0.0/8", "::1/128")


class SpyBackend(httpcore.AsyncNetworkBackend):
    """Records every TCP connect; connects for real only to loopback addresses."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        # A guard failure must never turn into traffic to a real internal or external host.
        if not ipaddress.ip_address(host).is_loopback:
            raise httpcore.ConnectError(f"test spy: refusing to really connect to {host}")
        return await self.inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class SpyConnector:
    """Records every connection the fetcher opens; connects for real only to loopback."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def __call__(
        self,
        factory: Callable[[], Http1Connection],
        address: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> Http1Connection:
        self.connects.append((address, port))
        # A guard failure must never turn into traffic to a real internal or external host.
        if not ipaddress.ip_address(address).is_loopback:
            raise ConnectionRefusedError(f"test spy: refusing to really connect to {address}")
        return await open_tcp(factory, address, port, ssl_context, server_hostname)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "allow_source_networks": LOOPBACK,
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "download_timeout": 5.0,
        "max_source_bytes": 1 << 20,
        "max_redirects": 3,
        "local_root": str(IMAGES_DIR),
        "user_agent": "imgsrv-test/1",
    }
    values.update(overrides)
    return Settings(**values)


class Harness:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spy = SpyConnector()
        self.fetcher = SourceFetcher(settings, connector=self.spy)

    async def fetch(self, raw: str) -> SourceBytes:
        return await self.fetcher.fetch(resolve_source(raw, self.settings))


@pytest.fixture
async def make() -> AsyncIterator[Any]:
    """Build fetchers with given settings; all are closed after the test."""
    made: list[Harness] = []

    def build(**overrides: Any) -> Harness:
        harness = Harness(make_settings(**overrides))
        made.append(harness)
        return harness

    yield build
    for harness in made:
        await harness.fetcher.aclose()


# --------------------------------------------------------------------------- http fetching


async def test_fetch_returns_the_file_bytes(origin: Origin, make: Any) -> None:
    h = make()
    result = await h.fetch(origin.url(f"files/{TINY_JPEG}"))
    assert result.data == (IMAGES_DIR / TINY_JPEG).read_bytes()
    assert result.content_type == "image/jpeg"
    assert result.url == origin.url(f"files/{TINY_JPEG}")
    assert origin.count(f"/files/{TINY_JPEG}") == 1
    headers = origin.requests(f"/files/{TINY_JPEG}")[0].headers
    assert headers["User-Agent"] == "imgsrv-test/1"
    assert headers["Accept-Encoding"] == "identity"


async def test_connections_are_reused(origin: Origin, make: Any) -> None:
    h = make()
    for _ in range(3):
        await h.fetch(origin.url(f"files/{TINY_JPEG}"))
    assert origin.count(f"/files/{TINY_JPEG}") == 3
    assert len(h.spy.connects) == 1


async def test_hostname_is_connected_by_checked_ip(origin: Origin, make: Any) -> None:
    h = make()
    result = await h.fetch(f"http://localhost:{origin.port}/files/{TINY_JPEG}")
    assert result.data == (IMAGES_DIR / TINY_JPEG).read_bytes()
    # The socket went to the address the guard checked, never to a name resolved again.
    assert [host for host, _ in h.spy.connects] in (["127.0.0.1"], ["::1"])
    assert origin.requests(f"/files/{TINY_JPEG}")[0].headers["Host"] == f"localhost:{origin.port}"


@pytest.mark.parametrize("status", [404, 410])
async def test_missing_source(origin: Origin, make: Any, status: int) -> None:
    with pytest.raises(SourceNotFound):
        await make().fetch(origin.url(f"status/{status}"))


async def test_origin_error_names_host_but_not_query(origin: Origin, make: Any) -> None:
    with pytest.raises(SourceError) as caught:
        await make().fetch(origin.url("status/500?token=s3cret"))
    assert "500" in caught.value.detail
    assert f"127.0.0.1:{origin.port}" in caught.value.detail
    assert "s3cret" not in caught.value.detail
    assert "status/500" not in caught.value.detail


async def test_connection_refused(make: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match="could not connect"):
        await make().fetch(f"http://127.0.0.1:{port}/x.jpg")


@pytest.mark.parametrize(
    "source", ["ftp://127.0.0.1/x.jpg", "file:///etc/passwd", "x.jpg", "/etc/passwd"]
)
async def test_fetch_refuses_unresolved_sources(make: Any, source: str) -> None:
    h = make()
    with pytest.raises(InvalidSource):
        await h.fetcher.fetch(source)
    assert h.spy.connects == []


async def test_origin_failing_then_succeeding(origin: Origin, make: Any) -> None:
    h = make()
    url = origin.url(f"flaky/a?fail=2&status=503&file={TINY_JPEG}")
    for _ in range(2):
        with pytest.raises(SourceError):
            await h.fetch(url)
    assert (await h.fetch(url)).data == (IMAGES_DIR / TINY_JPEG).read_bytes()
    assert origin.count("/flaky/a") == 3


# --------------------------------------------------------------------------- size limits


async def test_streamed_body_past_limit_is_cut_off(origin: Origin, make: Any) -> None:
    size = 64 << 20
    h = make(max_source_bytes=256 << 10)
    started = time.monotonic()
    with pytest.raises(SourceTooLarge):
        await h.fetch(origin.url(f"huge?size={size}&length=0"))
    assert time.monotonic() - started < 2
    stats = origin.wait_for_stats("/huge", lambda s: s.aborted or s.finished)
    assert stats.aborted and not stats.finished
    # Socket buffers let the origin write a few MiB before it notices; nowhere near all of it.
    assert stats.sent < size // 4


async def test_declared_length_past_limit_is_refused_before_reading(
    origin: Origin, make: Any
) -> None:
    # The origin waits 3 s between headers and body: only a refusal based on the headers
    # alone can come back quickly.
    h = make(max_source_bytes=1 << 20, read_timeout=10.0, download_timeout=10.0)
    started = time.monotonic()
    with pytest.raises(SourceTooLarge) as caught:
        await h.fetch(origin.url(f"huge?size={8 << 20}&length=1&wait=3"))
    assert time.monotonic() - started < 1.5
    assert str(8 << 20) in caught.value.detail
    assert origin.stats("/huge").sent == 0


async def test_body_at_the_limit_is_accepted(origin: Origin, make: Any) -> None:
    h = make(max_source_bytes=100_000)
    assert len((await h.fetch(origin.url("huge?size=100000&length=0"))).data) == 100_000


# --------------------------------------------------------------------------- timeouts


async def test_slow_headers_time_out(origin: Origin, make: Any) -> None:
    h = make(read_timeout=0.3, download_timeout=5.0)
    started = time.monotonic()
    with pytest.raises(SourceTimeout):
        await h.fetch(origin.url("slow-headers?delay=2"))
    assert 0.25 < time.monotonic() - started < 1.5


async def test_trickling_body_hits_the_total_deadline(origin: Origin, make: Any) -> None:
    # Each byte arrives well within the read timeout; only the total deadline can stop it.
    h = make(read_timeout=1.0, download_timeout=0.6)
    started = time.monotonic()
    with pytest.raises(SourceTimeout):
        await h.fetch(origin.url("trickle?chunks=200&interval=0.05"))
    assert 0.5 < time.monotonic() - started < 1.5


async def test_stalled_body_hits_the_read_timeout(origin: Origin, make: Any) -> None:
    h = make(read_timeout=0.3, download_timeout=5.0)
    started = time.monotonic()
    with pytest.raises(SourceTimeout):
        await h.fetch(origin.url("trickle?chunks=3&interval=2"))
    assert 0.25 < time.monotonic() - started < 1.5


def _send_truncated(handler: OriginRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b"x" * 10)
    handler.close_connection = True


async def test_truncated_body_is_a_source_error(origin: Origin, make: Any) -> None:
    origin.handler("/truncated", _send_truncated)
    with pytest.raises(SourceError, match="invalid HTTP response"):
        await make().fetch(origin.url("truncated"))


async def test_guarded_transport_raises_httpx_errors_while_reading(origin: Origin) -> None:
    # Other users of the transport (job callbacks) rely on httpx exceptions throughout.
    origin.handler("/truncated", _send_truncated)
    transport = GuardedTransport([ipaddress.ip_network("127.0.0.0/8")])
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(origin.url("truncated"))


# --------------------------------------------------------------------------- content codings


def _zeros_deflate(mebibytes: int) -> bytes:
    """A zlib stream of ``mebibytes`` MiB of zeros, about 1 KiB per MiB (without its trailer)."""
    compressor = zlib.compressobj(9)
    first = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    # A full flush starts the compressor afresh: every further MiB compresses to the same bytes.
    again = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + again * (mebibytes - 1)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw deflate"])
async def test_compressed_body_is_decoded(origin: Origin, make: Any, coding: str) -> None:
    data = (IMAGES_DIR / TINY_JPEG).read_bytes()
    if coding == "gzip":
        body = gzip.compress(data)
    elif coding == "deflate":
        body = zlib.compress(data)
    else:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = compressor.compress(data) + compressor.flush()
    encoding = coding.removeprefix("raw ")
    origin.route("/coded", body=body, headers={"Content-Encoding": encoding})
    assert (await make().fetch(origin.url("coded"))).data == data


async def test_decompression_bomb_is_cut_off_at_the_limit(origin: Origin, make: Any) -> None:
    body = _zeros_deflate(512)  # 512 MiB of zeros in about 520 KiB, less than the limit

    def send_bomb(handler: OriginRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Encoding", "deflate")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.flush()
        # The body lands in the socket buffer at once, so the client reads it in full chunks.
        time.sleep(0.2)
        handler.wfile.write(body)

    origin.handler("/bomb", send_bomb)
    h = make(max_source_bytes=1 << 20, download_timeout=10.0)
    tracemalloc.start()
    try:
        with pytest.raises(SourceTooLarge):
            await h.fetch(origin.url("bomb"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Decoded output never runs far past the limit, however much one chunk would expand to.
    assert peak < 16 << 20


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip"])
async def test_unsupported_content_encoding_is_refused(
    origin: Origin, make: Any, encoding: str
) -> None:
    origin.route("/coded", body=b"whatever", headers={"Content-Encoding": encoding})
    with pytest.raises(SourceError, match="Content-Encoding"):
        await make().fetch(origin.url("coded"))


@pytest.mark.parametrize("encoding", ["identity", "x-unknown"])
async def test_other_content_encodings_leave_the_body_as_is(
    origin: Origin, make: Any, encoding: str
) -> None:
    origin.route("/coded", body=b"as is", headers={"Content-Encoding": encoding})
    assert (await make().fetch(origin.url("coded"))).data == b"as is"


async def test_invalid_compressed_body_is_a_source_error(origin: Origin, make: Any) -> None:
    origin.route("/coded", body=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    with pytest.raises(SourceError, match="not valid gzip"):
        await make().fetch(origin.url("coded"))


# --------------------------------------------------------------------------- redirects


async def test_redirects_are_followed(origin: Origin, make: Any) -> None:
    h = make(max_redirects=3)
    target = f"/files/{TINY_JPEG}"
    result = await h.fetch(origin.url(f"chain/2?to={target}"))
    assert result.data == (IMAGES_DIR / TINY_JPEG).read_bytes()
    assert result.url == origin.url(target)
    assert [origin.count(p) for p in ("/chain/2", "/chain/1", "/chain/0", target)] == [1, 1, 1, 1]


async def test_too_many_redirects(origin: Origin, make: Any) -> None:
    h = make(max_redirects=3)
    assert (await h.fetch(origin.url("chain/3"))).data == b"end"
    with pytest.raises(SourceError, match="redirected more than 3 times"):
        await h.fetch(origin.url("chain/4"))


async def test_redirect_to_private_address_is_refused_without_connecting(
    origin: Origin, make: Any
) -> None:
    h = make(allow_source_networks=("127.0.0.0/8",))
    with pytest.raises(ForbiddenSource, match=r"10\.0\.0\.1"):
        await h.fetch(origin.url("redirect?to=http://10.0.0.1/x"))
    assert origin.count("/redirect") == 1
    assert h.spy.connects == [("127.0.0.1", origin.port)]


async def test_redirect_hop_is_checked_against_allowed_networks(origin: Origin, make: Any) -> None:
    h = make(allow_source_networks=("127.0.0.1/32",))
    with pytest.raises(ForbiddenSource):
        await h.fetch(origin.url(f"redirect?to=http://127.0.0.2:{origin.port}/files/{TINY_JPEG}"))
    assert origin.count(f"/files/{TINY_JPEG}") == 0
    assert [host for host, _ in h.spy.connects] == ["127.0.0.1"]


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "local://jpeg/progressive.jpg", "gopher://127.0.0.1/"]
)
async def test_redirect_to_other_scheme_is_refused(
    origin: Origin, make: Any, location: str
) -> None:
    with pytest.raises(ForbiddenSource):
        await make().fetch(origin.url(f"redirect?to={location}"))


async def test_redirect_hop_is_checked_against_allowed_hosts(origin: Origin, make: Any) -> None:
    h = make(allowed_source_hosts=("127.0.0.1",))
    with pytest.raises(ForbiddenSource, match="allowed source hosts"):
        await h.fetch(origin.url(f"redirect?to=http://localhost:{origin.port}/"))
    assert origin.count("/") == 0


# --------------------------------------------------------------------------- SSRF guard

FORBIDDEN_HOSTS = [
    "127.0.0.1",
    "localhost",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "100.100.100.200",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[fe80::1]",
    "[fc00::1]",
    "[fd00:ec2::254]",
    "[ff02::1]",
    "[::]",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "127.1",
    "0x7f.0.0.1",
]


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
async def test_guard_refuses_internal_addresses_without_connecting(
    origin: Origin, make: Any, host: str
) -> None:
    h = make(allow_source_networks=())
    # The origin's port: if the guard let a loopback form through, the origin would see it.
    url = f"http://{host}:{origin.port}/files/{TINY_JPEG}"
    with pytest.raises(ForbiddenSource) as caught:
        await h.fetcher.fetch(url)  # straight to fetch: it must check by itself
    assert h.spy.connects == []
    assert origin.total() == 0
    assert "/files/" not in caught.value.detail


@pytest.mark.parametrize("host", [h.strip("[]") for h in FORBIDDEN_HOSTS] + ["0177.0.0.1"])
async def test_backend_refuses_before_connecting(host: str) -> None:
    spy = SpyBackend()
    backend = GuardedNetworkBackend((), spy)
    with pytest.raises(ForbiddenSource):
        await backend.connect_tcp(host, 80, timeout=1.0)
    assert spy.connects == []


@pytest.mark.parametrize("host", [h for h in FORBIDDEN_HOSTS if h != "localhost"])
def test_resolve_source_refuses_literal_internal_addresses(host: str) -> None:
    with pytest.raises(ForbiddenSource):
        resolve_source(f"http://{host}/x.jpg", make_settings(allow_source_networks=()))


def test_url_checks_follow_the_settings() -> None:
    # Checked URLs are remembered; what is allowed must still depend on the settings in use.
    url = "http://127.0.0.1/x.jpg"
    assert resolve_source(url, make_settings(allow_source_networks=("127.0.0.0/8",))) == url
    with pytest.raises(ForbiddenSource):
        resolve_source(url, make_settings(allow_source_networks=()))
    named = "http://images.example.com/x.jpg"
    assert resolve_source(named, make_settings()) == named
    with pytest.raises(ForbiddenSource):
        resolve_source(named, make_settings(allowed_source_hosts=("other.example.com",)))


def test_octal_dotted_quad_is_invalid() -> None:
    # httpx rejects it as a malformed IPv4 address; the resolver would have read 127.0.0.1.
    with pytest.raises(InvalidSource):
        resolve_source("http://0177.0.0.1/x.jpg", make_settings(allow_source_networks=()))


def test_resolve_source_leaves_hostnames_to_the_connect_time_check() -> None:
    settings = make_settings(allow_source_networks=())
    assert resolve_source("http://localhost/x.jpg", settings) == "http://localhost/x.jpg"


async def test_allowed_networks_open_the_guard(origin: Origin, make: Any) -> None:
    h = make(allow_source_networks=("127.0.0.0/8",))
    result = await h.fetch(f"http://127.0.0.1:{origin.port}/files/{TINY_JPEG}")
    assert result.data == (IMAGES_DIR / TINY_JPEG).read_bytes()
    result = await h.fetch(f"http://2130706433:{origin.port}/files/{TINY_JPEG}")
    assert result.data == (IMAGES_DIR / TINY_JPEG).read_bytes()
    assert {host for host, _ in h.spy.connects} == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("168.63.129.16", False),  # Azure wire server: public range, still refused
        ("192.0.0.192", False),
        ("198.18.0.1", False),
        ("100.127.255.254", False),
        ("fec0::1", False),
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("64:ff9b:1::1", False),
    ],
)
def test_address_policy(address: str, allowed: bool) -> None:
    assert address_allowed(ipaddress.ip_address(address)) is allowed


def test_mapped_address_is_allowed_by_its_ipv4_network() -> None:
    networks = [ipaddress.ip_network("127.0.0.0/8")]
    assert address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), networks)
    assert not address_allowed(ipaddress.ip_address("::ffff:10.0.0.1"), networks)


# --------------------------------------------------------------------------- resolve_source


def test_relative_sources_join_the_base_url() -> None:
    settings = make_settings(source_base_url="https://cdn.example.com/img")
    assert resolve_source("a/b.jpg", settings) == "https://cdn.example.com/img/a/b.jpg"
    assert resolve_source("/a b.jpg?v=2", settings) == "https://cdn.example.com/img/a%20b.jpg?v=2"
    for escape in ("../secret.jpg", "a/../../b.jpg", "a/%2e%2e/%2E%2E/b.jpg", "..%2fb.jpg"):
        with pytest.raises(ForbiddenSource):
            resolve_source(escape, settings)
    with pytest.raises(InvalidSource):
        resolve_source("//evil.example.net/x.jpg", settings)


def test_relative_source_needs_a_base_url() -> None:
    with pytest.raises(InvalidSource, match="base URL"):
        resolve_source("a/b.jpg", make_settings())


def test_local_base_url() -> None:
    settings = make_settings(source_base_url="local://jpeg")
    assert resolve_source("progressive.jpg", settings) == "local://jpeg/progressive.jpg"


def test_http_urls_are_canonical() -> None:
    settings = make_settings()
    assert (
        resolve_source("HTTPS://CDN.Example.COM/A.jpg?x=1#frag", settings)
        == "https://cdn.example.com/A.jpg?x=1"
    )
    assert resolve_source("http://bücher.example/x", settings) == "http://xn--bcher-kva.example/x"
    once = resolve_source("http://example.com/a b/ü.jpg", settings)
    assert resolve_source(once, settings) == once


@pytest.mark.parametrize(
    "raw",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.jpg",
        "data:image/png;base64,AAAA",
        "gopher://example.com/",
        "javascript:alert(1)",
        "http:example.com/x.jpg",
        "http:///x.jpg",
        "http://exa mple.com/x.jpg",
        "http://example.com:99999/x.jpg",
        "",
        "http://example.com/\nx",
    ],
)
def test_bad_sources_are_invalid(raw: str) -> None:
    with pytest.raises(InvalidSource):
        resolve_source(raw, make_settings())


@pytest.mark.parametrize(
    "raw",
    [
        "http://user:pw@example.com/x.jpg",
        "http://user@example.com/x.jpg",
        "http://@example.com/x.jpg",
        "http://evil.example\\@example.com/x.jpg",
    ],
)
def test_credentials_are_refused(raw: str) -> None:
    with pytest.raises(InvalidSource, match="credentials"):
        resolve_source(raw, make_settings())


def test_host_allow_list() -> None:
    settings = make_settings(allowed_source_hosts=("images.example.com", "*.CDN.example.net"))
    for ok in (
        "https://images.example.com/a.jpg",
        "https://IMAGES.example.com./a.jpg",
        "https://eu.cdn.example.net/a.jpg",
        "https://a.b.cdn.example.net/a.jpg",
    ):
        assert resolve_source(ok, settings)
    for refused in (
        "https://example.com/a.jpg",
        "https://images.example.com.evil.net/a.jpg",
        "https://cdn.example.net/a.jpg",  # the wildcard names subdomains only
        "https://evilcdn.example.net/a.jpg",
    ):
        with pytest.raises(ForbiddenSource):
            resolve_source(refused, settings)


_PREFIXES = st.sampled_from(
    ["", "http://", "https://", "HTTP://", "local://", "LOCAL:", "file://", "//", "/", "http:"]
)
_HOSTISH = st.sampled_from(
    ["", "example.com", "127.0.0.1", "[::1]", "[", "]", "@", ":", "%", "%2e%2e", "..", "\\", "ü"]
)


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    raw=st.one_of(
        st.text(),
        st.tuples(_PREFIXES, _HOSTISH, st.text(max_size=30)).map("".join),
        st.lists(st.one_of(_HOSTISH, st.text(max_size=4)), max_size=8).map("/".join),
    ),
    base=st.sampled_from(["", "https://cdn.example.com/i/", "local://jpeg"]),
    allowed_hosts=st.sampled_from([(), ("example.com", "*.example.org")]),
)
def test_resolve_source_only_raises_source_errors(
    raw: str, base: str, allowed_hosts: tuple[str, ...]
) -> None:
    settings = make_settings(
        source_base_url=base, allowed_source_hosts=allowed_hosts, allow_source_networks=()
    )
    try:
        resolved = resolve_source(raw, settings)
    except (InvalidSource, ForbiddenSource):
        return
    # Whatever is accepted is stable: resolving it again gives the same string.
    assert resolve_source(resolved, settings) == resolved


# --------------------------------------------------------------------------- local://


async def test_local_file(make: Any) -> None:
    result = await make().fetch(f"local://{TINY_JPEG}")
    assert result.data == (IMAGES_DIR / TINY_JPEG).read_bytes()
    assert result.url == f"local://{TINY_JPEG}"
    assert result.content_type == "image/jpeg"


@pytest.mark.parametrize(
    "source",
    [
        "local://../origin.py",
        "local://jpeg/../../images/jpeg/progressive.jpg",
        "local:///etc/passwd",
        "local://%2e%2e/x.jpg",
        "local://jpeg/%2E%2E/%2e%2e/x.jpg",
        "local://..%2fx.jpg",
        "local://%2fetc/passwd",
    ],
)
async def test_local_traversal_is_refused(make: Any, source: str) -> None:
    h = make()
    with pytest.raises(ForbiddenSource):
        resolve_source(source, h.settings)
    with pytest.raises(ForbiddenSource):
        await h.fetcher.fetch(source)  # fetch checks by itself as well


async def test_local_symlink_escape_is_refused(make: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    (root / "inside.jpg").write_bytes(b"inside")
    (root / "escape.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "dir").symlink_to(tmp_path)
    (root / "alias.jpg").symlink_to(root / "inside.jpg")
    h = make(local_root=str(root))
    for source in ("local://escape.jpg", "local://dir/secret.jpg"):
        with pytest.raises(ForbiddenSource):
            await h.fetch(source)
    assert (await h.fetch("local://alias.jpg")).data == b"inside"


async def test_local_missing_and_directories(make: Any) -> None:
    h = make()
    for source in ("local://jpeg/nope.jpg", "local://nope/x.jpg", "local://jpeg"):
        with pytest.raises(SourceNotFound):
            await h.fetch(source)


async def test_local_file_too_large(make: Any) -> None:
    size = (IMAGES_DIR / TINY_JPEG).stat().st_size
    with pytest.raises(SourceTooLarge):
        await make(max_source_bytes=size - 1).fetch(f"local://{TINY_JPEG}")
    assert len((await make(max_source_bytes=size).fetch(f"local://{TINY_JPEG}")).data) == size


# --------------------------------------------------------------------------- HTTP/1.1 framing


def _raw(response: bytes, close: bool = True) -> Callable[[OriginRequestHandler], None]:
    """A route that writes ``response`` as it is (status line, headers and body)."""

    def send(handler: OriginRequestHandler) -> None:
        handler.wfile.write(response)
        handler.wfile.flush()
        handler.close_connection = close

    return send


async def test_chunked_body_with_extensions_and_trailers(origin: Origin, make: Any) -> None:
    origin.handler(
        "/chunked",
        _raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n",
            close=False,
        ),
    )
    h = make()
    assert (await h.fetch(origin.url("chunked"))).data == b"hello world"
    # The framing was complete, so the connection went back to the pool.
    assert (await h.fetch(origin.url("chunked"))).data == b"hello world"
    assert len(h.spy.connects) == 1


async def test_body_until_the_connection_closes(origin: Origin, make: Any) -> None:
    origin.handler("/until-close", _raw(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 100_000))
    h = make()
    assert (await h.fetch(origin.url("until-close"))).data == b"x" * 100_000
    assert (await h.fetch(origin.url("until-close"))).data == b"x" * 100_000
    assert len(h.spy.connects) == 2  # never reused: the end of the body was the close


async def test_connection_close_is_not_reused(origin: Origin, make: Any) -> None:
    origin.handler(
        "/close", _raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    )
    h = make()
    for _ in range(2):
        assert (await h.fetch(origin.url("close"))).data == b"ok"
    assert len(h.spy.connects) == 2


async def test_interim_responses_are_skipped(origin: Origin, make: Any) -> None:
    origin.handler(
        "/interim",
        _raw(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Type: image/x\r\n\r\nbody"
        ),
    )
    result = await make().fetch(origin.url("interim"))
    assert (result.data, result.content_type) == (b"body", "image/x")


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    origin: Origin, make: Any
) -> None:
    h = make()
    await h.fetch(origin.url(f"files/{TINY_JPEG}"))
    # The origin closes its side of the idle keep-alive connection (as servers do after
    # their idle timeout); the next download goes out again on a new connection.
    origin.handler(
        "/then-close", _raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=True)
    )
    assert (await h.fetch(origin.url("then-close"))).data == b"ok"
    await asyncio.sleep(0.2)  # let the close reach the pooled connection... or not
    assert (await h.fetch(origin.url("then-close"))).data == b"ok"
    assert len(h.spy.connects) == 2


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer coding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n", "CRLF"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "connection closed"),
        (b"HTTP/1.1 200 OK\r\nFolded: a\r\n b\r\nContent-Length: 0\r\n\r\n", "header line"),
        (b"HTTP/1.1 OK\r\n\r\n", "status line"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "headers too large"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "protocol switch"),
    ],
)
async def test_broken_framing_is_an_invalid_response(
    origin: Origin, make: Any, response: bytes, reason: str
) -> None:
    origin.handler("/broken", _raw(response))
    with pytest.raises(SourceError, match="invalid HTTP response") as caught:
        await make().fetch(origin.url("broken"))
    assert reason in caught.value.detail


async def test_chunked_body_past_the_limit_is_refused(origin: Origin, make: Any) -> None:
    chunk = b"1000\r\n" + b"y" * 4096 + b"\r\n"
    origin.handler(
        "/chunks", _raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 4)
    )
    with pytest.raises(SourceTooLarge):
        await make(max_source_bytes=10_000).fetch(origin.url("chunks"))


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 only (no DNS name), and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=imgsrv test origin", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_origin(certificate: tuple[Path, Path]) -> Iterator[Origin]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*certificate)
    server = Origin(tls=server_context)
    yield server
    server.close()


def _trusting(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    return context


async def test_https_source_is_verified_and_downloaded(
    tls_origin: Origin, certificate: tuple[Path, Path]
) -> None:
    fetcher = SourceFetcher(make_settings(), ssl_context=_trusting(certificate[0]))
    try:
        url = tls_origin.url(f"files/{TINY_JPEG}")
        for _ in range(2):
            result = await fetcher.fetch(url)
            assert result.data == (IMAGES_DIR / TINY_JPEG).read_bytes()
        assert tls_origin.count(f"/files/{TINY_JPEG}") == 2
    finally:
        await fetcher.aclose()


async def test_untrusted_certificate_is_refused(tls_origin: Origin) -> None:
    fetcher = SourceFetcher(make_settings())  # the certifi bundle does not know the test CA
    try:
        with pytest.raises(SourceError, match=r"TLS certificate .* could not be verified"):
            await fetcher.fetch(tls_origin.url(f"files/{TINY_JPEG}"))
    finally:
        await fetcher.aclose()


async def test_certificate_for_another_name_is_refused(
    tls_origin: Origin, certificate: tuple[Path, Path]
) -> None:
    tls_origin.reset()
    fetcher = SourceFetcher(make_settings(), ssl_context=_trusting(certificate[0]))
    try:
        # The certificate names 127.0.0.1 only; "localhost" reaches the same server.
        with pytest.raises(SourceError, match=r"could not be verified|could not connect"):
            await fetcher.fetch(f"https://localhost:{tls_origin.port}/files/{TINY_JPEG}")
        assert tls_origin.count(f"/files/{TINY_JPEG}") == 0
    finally:
        await fetcher.aclose()


async def test_plain_http_to_a_tls_port_is_an_invalid_response(tls_origin: Origin) -> None:
    fetcher = SourceFetcher(make_settings())
    try:
        with pytest.raises(SourceError):
            await fetcher.fetch(f"http://127.0.0.1:{tls_origin.port}/files/{TINY_JPEG}")
    finally:
        await fetcher.aclose()
