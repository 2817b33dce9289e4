"""Downloading sources: connect/read timeouts, a total deadline, a byte limit enforced while
streaming, and redirects followed by hand so that every hop is checked again."""

from __future__ import annotations

import asyncio
import ssl

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
from imgsrv.sources.codings import inflater_for, netloc
from imgsrv.sources.local import LOCAL_PREFIX, read_local
from imgsrv.sources.resolve import HTTP_SCHEMES, SCHEME_RE, check_http_url
from imgsrv.sources.source_bytes import SourceBytes
from imgsrv.sources.transport import TRANSPORT_ERRORS, GuardedTransport

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


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
            return await read_local(source, self._settings)
        if SCHEME_RE.match(source) is None:
            raise InvalidSource("fetch needs an absolute source; call resolve_source first")
        # Checked again: the fetcher must be safe even when handed a source that did not come
        # from resolve_source.
        url = check_http_url(source, self._settings)
        deadline = self._settings.download_timeout
        try:
            async with asyncio.timeout(deadline):
                return await self._download(url)
        except TimeoutError:
            raise SourceTimeout(
                f"downloading from source host {netloc(url)} took longer than {deadline:g} s"
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
                                f"source host {netloc(url)} redirected more than "
                                f"{self._settings.max_redirects} times"
                            )
                        url = self._redirect_target(url, response.headers["location"])
                        continue
                    _check_status(response.status_code, url)
                    data = await self._read_body(response, url)
                    return SourceBytes(data, str(url), response.headers.get("content-type"))
            except TRANSPORT_ERRORS as exc:
                raise _transport_failure(exc, url) from None

    def _redirect_target(self, url: httpx.URL, location: str) -> httpx.URL:
        try:
            target = url.join(location)
        except (httpx.InvalidURL, ValueError, UnicodeError):
            raise SourceError(f"source host {netloc(url)} redirected to an invalid URL") from None
        if target.scheme not in HTTP_SCHEMES:
            raise ForbiddenSource(
                f"source host {netloc(url)} redirected to a {target.scheme or 'relative'}: URL"
            )
        try:
            return check_http_url(str(target), self._settings)
        except InvalidSource:
            raise SourceError(f"source host {netloc(url)} redirected to an invalid URL") from None

    async def _read_body(self, response: httpx.Response, url: httpx.URL) -> bytes:
        limit = self._settings.max_source_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise SourceTooLarge(
                f"source is {int(declared)} bytes, more than the limit of {limit} bytes"
            )
        inflater = inflater_for(response.headers, url)
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


def _check_status(status: int, url: httpx.URL) -> None:
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise SourceNotFound(f"source not found: {netloc(url)} answered {status}")
    raise SourceError(f"source host {netloc(url)} answered {status}")


def _transport_failure(exc: Exception, url: httpx.URL) -> SourceError | SourceTimeout:
    """What a download that failed below the HTTP layer (httpx or httpcore errors) raises."""
    if isinstance(exc, (httpx.TimeoutException, httpcore.TimeoutException)):
        return SourceTimeout(f"source host {netloc(url)} did not answer in time")
    return SourceError(_transport_message(exc, url))


def _transport_message(exc: BaseException, url: httpx.URL) -> str:
    host = netloc(url)
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
