"""The URL grammar <-> TransformSpec, and HMAC URL signing.

Two front doors share one option parser (:func:`imgsrv.spec.parse_options`):

* path form  ``/{signature}/{option}/.../{source}`` where source is
  ``plain/{percent-encoded url}[@{ext}]`` or ``{base64url url}[.{ext}]`` (the base64 text may be
  split by ``/``);
* query form ``/img?url=...&w=300&fit=cover&sig=...`` where every parameter but ``url`` and
  ``sig`` is an option whose arguments are joined by ``:`` (``rs=cover:300:200``).

Signatures are unpadded base64url of HMAC-SHA256(key, salt + signed text). The signed text is
the raw path after the signature segment (path form) or ``/img?`` + the raw query string with the
trailing ``&sig=...`` removed (query form): exactly the bytes the client sent, so no
normalisation can make two different requests share a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode

from cachetools import LRUCache

from imgsrv.config import Settings
from imgsrv.errors import InvalidOption, InvalidSource, SignatureError
from imgsrv.sources import resolve_source
from imgsrv.spec import (
    DEFAULT_TTL,
    FormatChoice,
    SpecLimits,
    TransformSpec,
    normalise_format,
    parse_options,
)

UNSIGNED = "_"
QUERY_PATH = "/img"


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """A request URL turned into a spec; ``signed`` tells whether a signature was verified."""

    spec: TransformSpec
    signed: bool


def spec_limits(settings: Settings) -> SpecLimits:
    return SpecLimits(max_dimension=settings.max_output_dimension, presets=settings.presets)


# --------------------------------------------------------------------------- signing


def signature(text: str | bytes, settings: Settings) -> str:
    """Unpadded base64url HMAC-SHA256 of ``salt + text`` under the configured key."""
    raw = text.encode() if isinstance(text, str) else text
    digest = hmac.new(
        settings.signing_key_bytes, settings.signing_salt_bytes + raw, hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify_signature(given: str, text: bytes, settings: Settings) -> bool:
    """Check ``given`` against ``text``; without a configured key every URL is accepted.

    Returns whether the URL was actually signed (for the Cache-Control choice).
    """
    if not settings.signed:
        return False
    expected = signature(text, settings)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise SignatureError("the URL signature is missing or does not match")
    return True


def sign_path(path: str, settings: Settings) -> str:
    """``"/" + signature + path`` for a path built by :func:`build_path` (``/_`` when unsigned)."""
    sig = signature(path, settings) if settings.signed else UNSIGNED
    return f"/{sig}{path}"


def sign_query(path_and_query: str, settings: Settings) -> str:
    """Append ``&sig=...`` to a ``/img?...`` URL when a key is configured."""
    if not settings.signed:
        return path_and_query
    return f"{path_and_query}&sig={signature(path_and_query, settings)}"


# --------------------------------------------------------------------------- building


def build_path(source: str, options: Sequence[str], ext: str | None = None) -> str:
    """Path form without the signature segment: ``/w:300/plain/<encoded source>[@ext]``."""
    encoded = quote(source, safe="")
    tail = f"plain/{encoded}" + (f"@{ext}" if ext else "")
    return "/" + "/".join([*options, tail])


def build_query(source: str, options: Sequence[str], ext: str | None = None) -> str:
    """Query form without signature: ``/img?url=...&w=300``."""
    params: list[tuple[str, str]] = [("url", source)]
    for option in options:
        name, _, args = option.partition(":")
        params.append((name, args))
    if ext:
        params.append(("f", ext))
    return f"{QUERY_PATH}?{urlencode(params, safe=':')}"


def spec_path(spec: TransformSpec) -> str:
    """The canonical path form of a spec (unsigned), including a non-default ``ttl``."""
    options = [":".join([name, *args]) for name, args in spec.options()]
    if spec.ttl != DEFAULT_TTL:
        options.append(f"ttl:{spec.ttl}")
    return build_path(spec.source, options)


# --------------------------------------------------------------------------- parsing


def parse_path(raw_path: bytes, settings: Settings) -> ParsedUrl:
    """Parse the raw path form ``/{signature}/{options...}/{source}``.

    ``raw_path`` is the path exactly as sent (still percent-encoded, without the query).
    """
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidSource("the URL path must be ASCII (percent-encode the source)") from None
    sig, sep, rest = path.lstrip("/").partition("/")
    if not sep or not rest:
        raise InvalidSource("expected /{signature}/{options}/{source}")
    signed = verify_signature(unquote(sig), ("/" + rest).encode(), settings)
    segments = rest.split("/")
    options: list[tuple[str, list[str]]] = []
    index = 0
    while index < len(segments) and segments[index] != "plain" and ":" in segments[index]:
        name, *args = unquote(segments[index]).split(":")
        options.append((name, args))
        index += 1
    source_segments = segments[index:]
    if not source_segments or source_segments == [""]:
        raise InvalidSource("the URL names no source")
    if source_segments[0] == "plain":
        raw_source, fmt = _split_plain("/".join(source_segments[1:]))
    else:
        raw_source, fmt = _decode_base64_source(source_segments)
    return _build(raw_source, options, fmt, settings, signed)


def parse_query(raw_query: bytes, settings: Settings) -> ParsedUrl:
    """Parse the query form; ``raw_query`` is the query string exactly as sent."""
    try:
        query = raw_query.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidSource("the query string must be ASCII (percent-encode it)") from None
    signed_text, sig = _split_signature(query)
    signed = verify_signature(sig, f"{QUERY_PATH}?{signed_text}".encode(), settings)
    source = ""
    options: list[tuple[str, list[str]]] = []
    for name, value in parse_qsl(signed_text, keep_blank_values=True, strict_parsing=False):
        if name == "url":
            source = value
        elif name == "sig":
            raise InvalidOption("sig", "the signature must be the last parameter")
        else:
            options.append((name, value.split(":")))
    if not source:
        raise InvalidSource("the query needs a url parameter")
    return _build(source, options, None, settings, signed)


def _split_signature(query: str) -> tuple[str, str]:
    head, sep, sig = query.rpartition("&sig=")
    if sep and "&" not in sig:
        return head, unquote(sig)
    if query.startswith("sig="):
        raise InvalidOption("sig", "the signature must be the last parameter")
    return query, ""


def _split_plain(text: str) -> tuple[str, FormatChoice | None]:
    fmt: FormatChoice | None = None
    head, at, ext = text.rpartition("@")
    if at and ext and "/" not in ext:
        fmt = normalise_format("@ext", ext)
        text = head
    return unquote(text), fmt


def _decode_base64_source(segments: Sequence[str]) -> tuple[str, FormatChoice | None]:
    joined = "".join(segments)
    fmt: FormatChoice | None = None
    head, dot, ext = joined.rpartition(".")
    if dot:
        fmt = normalise_format(".ext", ext)
        joined = head
    try:
        raw = base64.urlsafe_b64decode(joined + "=" * (-len(joined) % 4))
        return raw.decode("utf-8"), fmt
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = segments[0].split(":")[0] if segments else ""
        raise InvalidSource(
            f"{name!r} is neither an option (name:args) nor a base64url source; "
            "use plain/<percent-encoded url> for plain sources"
        ) from None


def _build(
    raw_source: str,
    options: Sequence[tuple[str, Sequence[str]]],
    fmt: FormatChoice | None,
    settings: Settings,
    signed: bool,
) -> ParsedUrl:
    source = resolve_source(raw_source, settings)
    spec = parse_options(source, options, spec_limits(settings), fmt)
    return ParsedUrl(spec=spec, signed=signed)


class UrlParser:
    """Parses request URLs for one Settings, remembering recent results.

    Parsing is a pure function of the raw URL bytes (signature included) and the settings, and
    resolving a source is the costly part of it; hot URLs, the ones served from L1, are parsed
    once. Failures are not remembered: a bad URL is parsed, and refused, every time.
    """

    def __init__(self, settings: Settings, size: int = 8192) -> None:
        self.settings = settings
        self._paths: LRUCache[bytes, ParsedUrl] = LRUCache(size)
        self._queries: LRUCache[bytes, ParsedUrl] = LRUCache(size)

    def remembered_path(self, raw_path: bytes) -> ParsedUrl | None:
        """The parse of ``raw_path`` if it is remembered, else None (no parsing)."""
        return self._paths.get(raw_path)

    def remembered_query(self, raw_query: bytes) -> ParsedUrl | None:
        """The parse of ``raw_query`` if it is remembered, else None (no parsing)."""
        return self._queries.get(raw_query)

    def path(self, raw_path: bytes) -> ParsedUrl:
        """:func:`parse_path`, remembered."""
        parsed = self._paths.get(raw_path)
        if parsed is None:
            parsed = self._paths[raw_path] = parse_path(raw_path, self.settings)
        return parsed

    def query(self, raw_query: bytes) -> ParsedUrl:
        """:func:`parse_query`, remembered."""
        parsed = self._queries.get(raw_query)
        if parsed is None:
            parsed = self._queries[raw_query] = parse_query(raw_query, self.settings)
        return parsed
