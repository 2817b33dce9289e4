"""Source resolution: what a request names becomes one canonical source string, or a refusal.

Pure, no I/O. ``http(s)://`` URLs are kept (scheme and host lower-cased, fragment dropped),
``local://path`` is normalised, anything else is a path relative to the source base URL. What
can be refused without I/O is refused here: unknown schemes, credentials in URLs, hosts outside
the allow-list, literal IP addresses the SSRF guard forbids, paths that climb out of their base.
The canonical string is part of the cache key.
"""

from __future__ import annotations

import contextlib
import re
from functools import lru_cache
from urllib.parse import unquote

import httpx

from imgsrv.config import Settings
from imgsrv.errors import ForbiddenSource, InvalidSource
from imgsrv.sources.addresses import address_allowed, parse_ip_literal, parse_networks
from imgsrv.sources.local import canonical_local

MAX_SOURCE_LENGTH = 8192
HTTP_SCHEMES = frozenset({"http", "https"})

SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_HOSTNAME_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


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
    match = SCHEME_RE.match(raw)
    if match is not None:
        scheme = match.group(1).lower()
        if scheme in HTTP_SCHEMES:
            return str(check_http_url(raw, settings))
        if scheme == "local":
            rest = raw[match.end() :]
            if not rest.startswith("//"):
                raise InvalidSource("local source must have the form local://path")
            return canonical_local(rest[2:])
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


def check_http_url(raw: str, settings: Settings) -> httpx.URL:
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
    address = parse_ip_literal(host)
    if address is None and (len(host) > 253 or not _HOSTNAME_RE.match(host)):
        raise InvalidSource(f"source URL host {_short(host)!r} is not a valid host name")
    if not _host_allowed(host, allowed_hosts):
        raise ForbiddenSource(f"source host {host!r} is not in the allowed source hosts")
    if address is not None and not address_allowed(address, parse_networks(allowed_networks)):
        raise ForbiddenSource(f"source host {host!r} is a non-public address")
    return url.copy_with(fragment=None)


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


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
