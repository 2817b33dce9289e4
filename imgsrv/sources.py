"""Fetching source images: http(s) with limits and an SSRF guard, and local files.

Two steps, kept apart on purpose:

* :func:`resolve_source` is pure. It turns what the URL grammar carried into one absolute,
  canonical source string (this string is part of the cache key) and refuses what can be refused
  without I/O: unknown schemes, credentials in URLs, hosts outside ``allowed_source_hosts``,
  literal IP addresses that the SSRF guard forbids, path traversal.
* :class:`SourceFetcher` downloads it, with connect/read timeouts, a total deadline, a byte limit
  enforced while streaming, and redirects followed by hand so that every hop is checked again.

How the SSRF guard connects to the address it checked
-----------------------------------------------------
Checking a hostname's addresses and then letting the HTTP client resolve it again would leave a
DNS-rebinding window: the second answer could be ``127.0.0.1``. So resolution and the check
happen *inside* the connection step. httpcore (under httpx) opens every TCP connection through an
``httpcore.AsyncNetworkBackend``; :class:`GuardedNetworkBackend` wraps the default one, and its
``connect_tcp(host, port)`` resolves ``host`` itself with ``getaddrinfo``, refuses the whole host
if *any* of its addresses is forbidden, and then asks the wrapped backend to connect to one of the
checked IP addresses. httpcore still knows the hostname, so TLS SNI, certificate verification and
the ``Host`` header all use the name, not the IP.

The backend is plugged in through public API only: :class:`GuardedTransport` is a small
``httpx.AsyncBaseTransport`` that owns an ``httpcore.AsyncConnectionPool(network_backend=...)``
and converts requests, responses and exceptions between httpx and httpcore. Subclassing
``httpx.AsyncHTTPTransport`` and swapping its private ``_pool`` would be shorter, but if that
attribute were ever renamed the guard would silently stop applying; this way it cannot be
bypassed, and no proxy (from the environment or elsewhere) is ever involved. Callbacks and any
other outgoing request that must not reach internal addresses can use the same transport.

A refused address raises :class:`~imgsrv.errors.ForbiddenSource` before any socket is opened;
httpcore passes exceptions from the backend through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import mimetypes
import re
import socket
import ssl
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpcore
import httpx

from imgsrv.config import Settings
from imgsrv.errors import (
    ForbiddenSource,
    InvalidSource,
    SourceError,
    SourceNotFound,
    SourceTimeout,
    SourceTooLarge,
)

__all__ = [
    "GuardedNetworkBackend",
    "GuardedTransport",
    "SourceBytes",
    "SourceFetcher",
    "address_allowed",
    "resolve_source",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOCAL_PREFIX = "local://"
MAX_SOURCE_LENGTH = 8192
HTTP_SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Connection pool shape: one pool per process, shared by every download.
POOL_MAX_CONNECTIONS = 100
POOL_MAX_KEEPALIVE = 20
POOL_KEEPALIVE_EXPIRY = 30.0

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_HOSTNAME_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
_IPV4_PART_RE = re.compile(r"^(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# Cloud metadata endpoints. Most sit in ranges refused anyway (link-local, CGNAT, ULA); they are
# listed so the intent is explicit, and a few (Azure's wire server) are otherwise public.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS resolver
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "192.0.0.192",  # Oracle Cloud
    )
)

# Ranges that the standard library's is_global/is_private do not cover on every Python version.
_EXTRA_FORBIDDEN_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.x.y.z reaches the local host on Linux
        "100.64.0.0/10",  # carrier-grade NAT, also Alibaba metadata
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "64:ff9b:1::/48",  # local-use NAT64
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


# --------------------------------------------------------------------------- address policy


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to, if any (mapped, compatible, NAT64, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _is_public(address: IPAddress) -> bool:
    if address in METADATA_ADDRESSES:
        return False
    if (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or not address.is_global
    ):
        return False
    if any(address in network for network in _EXTRA_FORBIDDEN_NETWORKS):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        # Without this, ::ffff:127.0.0.1 or 64:ff9b::a00:1 would reach an IPv4 address
        # that is refused when written plainly.
        embedded = _embedded_ipv4(address)
        if embedded is not None and not _is_public(embedded):
            return False
    return True


def address_allowed(address: IPAddress, allowed_networks: Iterable[IPNetwork] = ()) -> bool:
    """Whether the SSRF guard lets a connection to ``address`` through.

    Public unicast addresses pass; loopback, private, CGNAT, link-local, unique-local,
    multicast, unspecified, reserved and cloud-metadata addresses (IPv4 or IPv6, including IPv6
    forms that embed an IPv4 address) are refused unless they are inside ``allowed_networks``.
    """
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            candidates.append(embedded)
    for network in allowed_networks:
        if any(candidate in network for candidate in candidates):
            return True
    return _is_public(address)


def _parse_ip_literal(host: str) -> IPAddress | None:
    """Parse a URL host the way the system resolver would if it is an IP address.

    Besides dotted quads this accepts the legacy ``inet_aton`` forms that ``getaddrinfo`` also
    accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``), so that they are refused here
    rather than only at connect time.
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART_RE.match(part) for part in parts):
        return None
    numbers: list[int] = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    # inet_aton: every part but the last is one byte; the last fills the remaining bytes.
    *leading, last = numbers
    if any(n > 0xFF for n in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


# --------------------------------------------------------------------------- resolve_source


@dataclass(frozen=True, slots=True)
class SourceBytes:
    """A downloaded or read source image."""

    data: bytes
    url: str  # final URL after redirects (or the local:// url)
    content_type: str | None


def resolve_source(raw: str, settings: Settings) -> str:
    """Turn a source reference from a request into an absolute, canonical source string.

    ``http(s)://`` URLs are kept (scheme and host lower-cased, fragment dropped), ``local://path``
    is normalised, and anything else is a path relative to ``settings.source_base_url``. Raises
    :class:`InvalidSource` for malformed input or unsupported schemes, and
    :class:`ForbiddenSource` for hosts outside ``allowed_source_hosts``, literal addresses the SSRF
    guard refuses, and paths that climb out of their base. Pure: no I/O.
    """
    if not raw:
        raise InvalidSource("empty source")
    if len(raw) > MAX_SOURCE_LENGTH:
        raise InvalidSource(f"source is longer than {MAX_SOURCE_LENGTH} characters")
    if _CONTROL_RE.search(raw):
        raise InvalidSource("source contains control characters")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise InvalidSource("source is not valid Unicode") from None
    match = _SCHEME_RE.match(raw)
    if match is not None:
        scheme = match.group(1).lower()
        if scheme in HTTP_SCHEMES:
            return str(_check_http_url(raw, settings))
        if scheme == "local":
            rest = raw[match.end() :]
            if not rest.startswith("//"):
                raise InvalidSource("local source must have the form local://path")
            return _canonical_local(rest[2:])
        raise InvalidSource(f"unsupported source scheme {scheme!r}: use http, https or local")
    return _join_base(raw, settings)


def _join_base(relative: str, settings: Settings) -> str:
    base = settings.source_base_url
    if not base:
        raise InvalidSource("relative source, but no source base URL is configured")
    if relative.startswith("//"):
        raise InvalidSource("scheme-relative source URLs are not supported")
    path = relative.lstrip("/")
    path_only = re.split(r"[?#]", path, maxsplit=1)[0]
    if _has_dot_dot(path_only):
        raise ForbiddenSource("relative source path climbs out of the source base URL")
    if not base.endswith("/"):
        base += "/"
    return resolve_source(base + path, settings)


def _has_dot_dot(path: str) -> bool:
    # Decoded, because origins and file systems treat %2e%2e and %2f like their plain forms.
    decoded = unquote(path).replace("\\", "/")
    return ".." in decoded.split("/")


# The same URL is checked when a request is parsed, again before it is downloaded, and on every
# later request for it. Refusals raise, so only accepted URLs are kept; long ones are not, to
# bound the memory the cache can hold. httpx.URL is immutable, so sharing one is safe.
_CACHED_URL_LENGTH = 1024


def _check_http_url(raw: str, settings: Settings) -> httpx.URL:
    """Parse and check an http(s) URL; the result's string form is canonical."""
    if len(raw) > _CACHED_URL_LENGTH:
        return _parse_http_url(raw, settings.allowed_source_hosts, settings.allow_source_networks)
    return _cached_http_url(raw, settings.allowed_source_hosts, settings.allow_source_networks)


@lru_cache(maxsize=2048)
def _cached_http_url(
    raw: str, allowed_hosts: tuple[str, ...], allowed_networks: tuple[str, ...]
) -> httpx.URL:
    return _parse_http_url(raw, allowed_hosts, allowed_networks)


def _parse_http_url(
    raw: str, allowed_hosts: tuple[str, ...], allowed_networks: tuple[str, ...]
) -> httpx.URL:
    scheme_end = raw.index(":") + 1
    if raw[scheme_end : scheme_end + 2] != "//":
        raise InvalidSource("http(s) source URL must have the form scheme://host/path")
    authority = re.split(r"[/?#]", raw[scheme_end + 2 :], maxsplit=1)[0]
    if "@" in authority or "\\" in authority:
        raise InvalidSource("credentials are not allowed in source URLs")
    try:
        url = httpx.URL(raw)
        host = url.raw_host.decode("ascii")
        port = url.port
    except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
        raise InvalidSource(f"malformed source URL: {_short(str(exc))}") from None
    if url.scheme not in HTTP_SCHEMES:
        raise InvalidSource(f"unsupported source scheme {url.scheme!r}: use http, https or local")
    if url.userinfo:
        raise InvalidSource("credentials are not allowed in source URLs")
    if not host:
        raise InvalidSource("source URL has no host")
    if port is not None and not 0 < port < 65536:
        raise InvalidSource("source URL port is out of range")
    address = _parse_ip_literal(host)
    if address is None and (len(host) > 253 or not _HOSTNAME_RE.match(host)):
        raise InvalidSource(f"source URL host {_short(host)!r} is not a valid host name")
    if not _host_allowed(host, allowed_hosts):
        raise ForbiddenSource(f"source host {host!r} is not in the allowed source hosts")
    if address is not None and not address_allowed(address, _networks(allowed_networks)):
        raise ForbiddenSource(f"source host {host!r} is a non-public address")
    return url.copy_with(fragment=None)


@lru_cache(maxsize=16)
def _networks(allowed_networks: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """``Settings.allowed_networks`` without parsing the networks again on every call."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)


def _host_allowed(host: str, allowed_hosts: tuple[str, ...]) -> bool:
    if not allowed_hosts:
        return True
    host = host.lower().rstrip(".")
    for pattern in _normalised_patterns(allowed_hosts):
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


@lru_cache(maxsize=16)
def _normalised_patterns(allowed_hosts: tuple[str, ...]) -> tuple[str, ...]:
    """Allow-list entries lower-cased, without trailing dot, international names in punycode."""
    patterns = []
    for entry in allowed_hosts:
        entry = entry.strip().lower().rstrip(".")
        wildcard = entry.startswith("*.")
        name = entry[2:] if wildcard else entry
        with contextlib.suppress(httpx.InvalidURL, ValueError, UnicodeError):
            name = httpx.URL(f"http://{name}/").raw_host.decode("ascii") or name
        patterns.append(f"*.{name}" if wildcard else name)
    return tuple(patterns)


def _local_segments(path: str) -> list[str]:
    """Decoded, normalised segments of a local path; refuses anything that could leave the root."""
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidSource("local source path is not valid UTF-8") from None
    if "\x00" in decoded or "\\" in decoded:
        raise InvalidSource("local source path contains a NUL or backslash")
    if decoded.startswith("/"):
        raise ForbiddenSource("local source paths must be relative to the local root")
    segments = [s for s in decoded.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise ForbiddenSource("local source path climbs out of the local root")
    if not segments:
        raise InvalidSource("empty local source path")
    return segments


def _canonical_local(path: str) -> str:
    # Decoded once here and quoted again, so resolving a resolved source changes nothing.
    return LOCAL_PREFIX + quote("/".join(_local_segments(path)), safe="/")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- network backend


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that only connects to addresses the SSRF guard allows.

    ``connect_tcp`` resolves the host itself, refuses it with :class:`ForbiddenSource` if any of
    its addresses is forbidden, and connects the wrapped backend to a checked IP address, so there
    is no second DNS lookup an attacker could answer differently.
    """

    def __init__(
        self,
        allowed_networks: Iterable[IPNetwork] = (),
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allowed = tuple(allowed_networks)
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(host, port)
                if not all(address_allowed(a, self._allowed) for a in addresses):
                    raise ForbiddenSource(f"source host {host!r} resolves to a non-public address")
                return await self._connect_any(addresses, port, local_address, socket_options)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {host} timed out") from None

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        literal = _parse_ip_literal(host)
        if literal is not None:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise SourceError(f"could not resolve source host {host!r}") from None
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            # Scope ids (fe80::1%eth0) only occur on link-local addresses, which are refused
            # unless allowed; keep the scope so such an allowed address stays reachable.
            address = ipaddress.ip_address(str(sockaddr[0]))
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise SourceError(f"could not resolve source host {host!r}")
        return addresses

    async def _connect_any(
        self,
        addresses: list[IPAddress],
        port: int,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> httpcore.AsyncNetworkStream:
        last_error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=None,  # the caller's deadline covers resolution and every attempt
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError("no address to connect to")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ForbiddenSource("unix socket sources are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# --------------------------------------------------------------------------- httpx transport

_HTTPCORE_TO_HTTPX: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProxyError: httpx.ProxyError,
}
# What a download can fail with below the HTTP layer: httpx's errors, and httpcore's own while a
# body is read without the httpx wrapper (see ``GuardedTransport(httpx_body_errors=False)``).
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TransportError,
    ssl.SSLError,
    *_HTTPCORE_TO_HTTPX,
)


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    """Re-raise httpcore exceptions as their httpx counterparts; everything else unchanged."""
    try:
        yield
    except Exception as exc:
        for cls in type(exc).__mro__:
            target = _HTTPCORE_TO_HTTPX.get(cls)
            if target is not None:
                raise target(str(exc), request=request) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    """An httpcore response body as an httpx stream; errors while reading it become httpx's."""

    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _httpx_errors(self._request):
                await close()


class _CoreResponseStream(httpx.AsyncByteStream):
    """An httpcore response body as an httpx stream, each chunk handed on without a wrapper."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose TCP connections all go through :class:`GuardedNetworkBackend`.

    HTTP/1.1 with keep-alive, TLS verified against the system-independent certifi bundle, never
    a proxy. Errors are httpx exceptions, except with ``httpx_body_errors=False``: then errors
    while a response body is read are httpcore's, which spares every chunk a wrapper when the
    caller maps both kinds anyway (as :class:`SourceFetcher` does).
    """

    def __init__(
        self,
        allowed_networks: Iterable[IPNetwork] = (),
        *,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = POOL_MAX_CONNECTIONS,
        max_keepalive_connections: int = POOL_MAX_KEEPALIVE,
        keepalive_expiry: float = POOL_KEEPALIVE_EXPIRY,
        httpx_body_errors: bool = True,
    ) -> None:
        self._httpx_body_errors = httpx_body_errors
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedNetworkBackend(allowed_networks, network_backend),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("GuardedTransport needs an async request body")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            core_response = await self._pool.handle_async_request(core_request)
        if not isinstance(core_response.stream, AsyncIterable):
            raise TypeError("httpcore returned a sync response stream")
        stream: httpx.AsyncByteStream
        if self._httpx_body_errors:
            stream = _ResponseStream(core_response.stream, request)
        else:
            stream = _CoreResponseStream(core_response.stream)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=stream,
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


# --------------------------------------------------------------------------- fetcher


class SourceFetcher:
    """Downloads sources; one per process, holding one pooled keep-alive HTTP client."""

    def __init__(
        self,
        settings: Settings,
        *,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        """``network_backend`` replaces the backend the guard connects through (tests use it
        to observe connections); the SSRF guard applies either way."""
        self._settings = settings
        self._client = httpx.AsyncClient(
            transport=GuardedTransport(
                settings.allowed_networks,
                network_backend=network_backend,
                httpx_body_errors=False,  # _download maps httpcore's errors as well
            ),
            timeout=httpx.Timeout(
                settings.read_timeout,
                connect=settings.connect_timeout,
                pool=settings.download_timeout,
            ),
            headers={
                "User-Agent": settings.user_agent,
                "Accept": "image/*,*/*;q=0.8",
                # Images do not compress; asking for identity keeps the byte limit meaningful.
                "Accept-Encoding": "identity",
            },
            follow_redirects=False,  # followed by hand, so that every hop is checked
            trust_env=False,  # no proxies, no .netrc credentials from the environment
        )

    async def fetch(self, source: str) -> SourceBytes:
        """Fetch a source returned by :func:`resolve_source`.

        Raises :class:`ForbiddenSource`, :class:`SourceNotFound`, :class:`SourceTooLarge`,
        :class:`SourceError` or :class:`SourceTimeout`.
        """
        if source.startswith(LOCAL_PREFIX):
            return await self._read_local(source)
        if _SCHEME_RE.match(source) is None:
            raise InvalidSource("fetch needs an absolute source; call resolve_source first")
        # Checked again: the fetcher must be safe even when handed a source that did not come
        # from resolve_source.
        url = _check_http_url(source, self._settings)
        deadline = self._settings.download_timeout
        try:
            async with asyncio.timeout(deadline):
                return await self._download(url)
        except TimeoutError:
            raise SourceTimeout(
                f"downloading from source host {_netloc(url)} took longer than {deadline:g} s"
            ) from None

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    async def _download(self, url: httpx.URL) -> SourceBytes:
        redirects = 0
        while True:
            try:
                async with self._client.stream("GET", url) as response:
                    if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                        redirects += 1
                        if redirects > self._settings.max_redirects:
                            raise SourceError(
                                f"source host {_netloc(url)} redirected more than "
                                f"{self._settings.max_redirects} times"
                            )
                        url = self._redirect_target(url, response.headers["location"])
                        continue
                    _check_status(response.status_code, url)
                    data = await self._read_body(response, url)
                    return SourceBytes(data, str(url), response.headers.get("content-type"))
            except _TRANSPORT_ERRORS as exc:
                raise _transport_failure(exc, url) from None

    def _redirect_target(self, url: httpx.URL, location: str) -> httpx.URL:
        try:
            target = url.join(location)
        except (httpx.InvalidURL, ValueError, UnicodeError):
            raise SourceError(f"source host {_netloc(url)} redirected to an invalid URL") from None
        if target.scheme not in HTTP_SCHEMES:
            raise ForbiddenSource(
                f"source host {_netloc(url)} redirected to a {target.scheme or 'relative'}: URL"
            )
        try:
            return _check_http_url(str(target), self._settings)
        except InvalidSource:
            raise SourceError(f"source host {_netloc(url)} redirected to an invalid URL") from None

    async def _read_body(self, response: httpx.Response, url: httpx.URL) -> bytes:
        limit = self._settings.max_source_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise SourceTooLarge(
                f"source is {int(declared)} bytes, more than the limit of {limit} bytes"
            )
        inflater = _inflater(response.headers, url)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            if inflater is not None:
                chunk = inflater.decode(chunk, limit - size)
            size += len(chunk)
            if size > limit:
                # Leaving the stream context closes the connection: the rest is never read.
                raise SourceTooLarge(f"source is more than the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _read_local(self, source: str) -> SourceBytes:
        segments = _local_segments(source[len(LOCAL_PREFIX) :])
        root = self._settings.local_root_path
        data = await asyncio.to_thread(_read_local_file, root, segments, self._settings)
        content_type, _ = mimetypes.guess_type(segments[-1])
        return SourceBytes(data, source, content_type)


def _read_local_file(root: Path, segments: list[str], settings: Settings) -> bytes:
    """Read a file below ``root``; runs in a worker thread."""
    limit = settings.max_source_bytes
    shown = "/".join(segments)
    try:
        real_root = root.resolve(strict=True)
        # resolve() follows symlinks, so a link inside the root that points outside is caught.
        target = real_root.joinpath(*segments).resolve()
        if not target.is_relative_to(real_root):
            raise ForbiddenSource(f"local source {shown!r} points outside the local root")
        if not target.is_file():
            raise SourceNotFound(f"local source {shown!r} not found")
        with target.open("rb") as f:
            # Read one byte past the limit instead of trusting a stat() that may be stale.
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise SourceNotFound(f"local source {shown!r} not found") from None
    except PermissionError:
        raise ForbiddenSource(f"local source {shown!r} is not readable") from None
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, on Python < 3.13
        raise SourceError(f"could not read local source {shown!r}") from None
    if len(data) > limit:
        raise SourceTooLarge(f"local source is more than the limit of {limit} bytes")
    return data


def _check_status(status: int, url: httpx.URL) -> None:
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise SourceNotFound(f"source not found: {_netloc(url)} answered {status}")
    raise SourceError(f"source host {_netloc(url)} answered {status}")


def _netloc(url: httpx.URL) -> str:
    """Host and port for messages: never the path or query, which may carry secrets."""
    return url.netloc.decode("ascii", "replace")


def _transport_failure(exc: Exception, url: httpx.URL) -> SourceError | SourceTimeout:
    """What a download that failed below the HTTP layer (httpx or httpcore errors) raises."""
    if isinstance(exc, (httpx.TimeoutException, httpcore.TimeoutException)):
        return SourceTimeout(f"source host {_netloc(url)} did not answer in time")
    return SourceError(_transport_message(exc, url))


def _transport_message(exc: BaseException, url: httpx.URL) -> str:
    host = _netloc(url)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate of source host {host} could not be verified"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake with source host {host} failed"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, (httpx.ConnectError, httpcore.ConnectError)):
        return f"could not connect to source host {host}"
    if isinstance(exc, (httpx.ProtocolError, httpcore.ProtocolError)):
        return f"source host {host} sent an invalid HTTP response"
    return f"connection to source host {host} failed"


# --------------------------------------------------------------------------- content codings

# Codings httpx would decode. Sources are asked for identity; an origin that compresses anyway
# gets gzip and deflate decoded with a bound on the output, and the others refused, since a
# small compressed body can expand to far more than the byte limit.
_INFLATE_WBITS = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
_COMPRESSIONS = frozenset({*_INFLATE_WBITS, "br", "zstd"})


def _inflater(headers: httpx.Headers, url: httpx.URL) -> _Inflater | None:
    """A decoder for the body's Content-Encoding, or None when it needs none."""
    if "content-encoding" not in headers:
        return None
    codings = [c.strip().lower() for c in headers.get_list("content-encoding", split_commas=True)]
    # Other values (identity, or tokens nobody knows) leave the body as it is, as in httpx.
    compressions = [c for c in codings if c in _COMPRESSIONS]
    if not compressions:
        return None
    if len(compressions) == 1 and compressions[0] in _INFLATE_WBITS:
        return _Inflater(compressions[0], url)
    raise SourceError(
        f"source host {_netloc(url)} sent Content-Encoding {', '.join(compressions)!r}, "
        "which is not supported"
    )


class _Inflater:
    """Decodes a gzip or deflate body a chunk at a time, never past a given size."""

    def __init__(self, coding: str, url: httpx.URL) -> None:
        self._coding = coding
        self._url = url
        self._zlib = zlib.decompressobj(_INFLATE_WBITS[coding])
        self._first = True

    def decode(self, data: bytes, room: int) -> bytes:
        """``data`` decoded, cut off after ``room + 1`` bytes: longer than ``room`` is too large.

        Output shorter than that means all of ``data`` was consumed, so nothing is left over.
        """
        first, self._first = self._first, False
        try:
            return self._zlib.decompress(data, room + 1)
        except zlib.error:
            if first and self._coding == "deflate":
                # Deflate without its zlib header: servers send it, and httpx accepts it too.
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.decode(data, room)
            raise SourceError(
                f"source host {_netloc(self._url)} sent a body that is not valid {self._coding}"
            ) from None
