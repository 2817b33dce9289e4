"""Downloading sources: connect/read timeouts, a total deadline, a byte limit enforced while
streaming, and redirects followed by hand so that every hop is checked again."""

from __future__ import annotations

import asyncio
import ssl

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
from imgsrv.sources.http1 import Connector, Http1Pool, Http1Response, open_tcp
from imgsrv.sources.local import LOCAL_PREFIX, read_local
from imgsrv.sources.resolve import HTTP_SCHEMES, SCHEME_RE, check_http_url
from imgsrv.sources.source_bytes import SourceBytes

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


# Images do not compress; asking for identity keeps the byte limit meaningful.
REQUEST_HEADERS = (("Accept", "image/*,*/*;q=0.8"), ("Accept-Encoding", "identity"))


class SourceFetcher:
    """Downloads sources; one per process, holding one pool of keep-alive connections."""

    def __init__(
        self,
        settings: Settings,
        *,
        connector: Connector = open_tcp,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``connector`` opens connections to the addresses the guard checked (tests use it to
        observe them), ``ssl_context`` verifies TLS (default: the certifi bundle)."""
        self._settings = settings
        self._pool = Http1Pool(
            settings.allowed_networks, connector=connector, ssl_context=ssl_context
        )
        self._headers = (("User-Agent", settings.user_agent), *REQUEST_HEADERS)

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
        await self._pool.aclose()

    async def _download(self, url: httpx.URL) -> SourceBytes:
        settings = self._settings
        redirects = 0
        while True:
            response = await self._pool.get(
                url,
                self._headers,
                limit=settings.max_source_bytes,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
            )
            location = response.headers.get("location")
            if response.status in REDIRECT_STATUSES and location is not None:
                redirects += 1
                if redirects > settings.max_redirects:
                    raise SourceError(
                        f"source host {netloc(url)} redirected more than "
                        f"{settings.max_redirects} times"
                    )
                url = self._redirect_target(url, location)
                continue
            _check_status(response.status, url)
            assert response.body is not None  # 2xx responses come with their body
            data = _decoded(response, url, settings.max_source_bytes)
            return SourceBytes(data, str(url), response.headers.get("content-type"))

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


def _decoded(response: Http1Response, url: httpx.URL, limit: int) -> bytes:
    """The body with its content coding (if any) undone, never past ``limit`` bytes."""
    assert response.body is not None
    inflater = inflater_for(response.headers, url)
    if inflater is None:
        return response.body
    data = inflater.decode(response.body, limit)
    if len(data) > limit:
        raise SourceTooLarge(f"source is more than the limit of {limit} bytes")
    return data


def _check_status(status: int, url: httpx.URL) -> None:
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise SourceNotFound(f"source not found: {netloc(url)} answered {status}")
    raise SourceError(f"source host {netloc(url)} answered {status}")
