"""The httpx transport under the SSRF guard, for job callbacks.

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
bypassed, and no proxy (from the environment or elsewhere) is ever involved.

A refused address raises :class:`~imgsrv.errors.ForbiddenSource` before any socket is opened;
httpcore passes exceptions from the backend through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

import httpcore
import httpx

from imgsrv.errors import ForbiddenSource
from imgsrv.sources.addresses import IPAddress, IPNetwork
from imgsrv.sources.resolver import resolve_checked

# Connection pool shape: one pool per process, shared by every download.
POOL_MAX_CONNECTIONS = 100
POOL_MAX_KEEPALIVE = 20
POOL_KEEPALIVE_EXPIRY = 30.0


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
                addresses = await resolve_checked(host, port, self._allowed)
                return await self._connect_any(addresses, port, local_address, socket_options)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {host} timed out") from None

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


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose TCP connections all go through :class:`GuardedNetworkBackend`.

    HTTP/1.1 with keep-alive, TLS verified against the system-independent certifi bundle, never
    a proxy; errors are httpx exceptions throughout.
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
    ) -> None:
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
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream, request),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
