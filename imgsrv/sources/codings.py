"""Content codings of source bodies: gzip and deflate decoded with a bound, others refused."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import httpx

from imgsrv.errors import SourceError

# Codings that HTTP clients commonly decode. Sources are asked for identity; an origin that
# compresses anyway gets gzip and deflate decoded with a bound on the output, and the others
# refused, since a small compressed body can expand to far more than the byte limit.
_INFLATE_WBITS = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
_COMPRESSIONS = frozenset({*_INFLATE_WBITS, "br", "zstd"})


def inflater_for(headers: Mapping[str, str], url: httpx.URL) -> Inflater | None:
    """A decoder for the body's Content-Encoding (``headers`` has lower-case names, repeated
    headers joined by commas), or None when it needs none."""
    value = headers.get("content-encoding")
    if value is None:
        return None
    codings = [c.strip().lower() for c in value.split(",")]
    # Other values (identity, or tokens nobody knows) leave the body as it is, as in httpx.
    compressions = [c for c in codings if c in _COMPRESSIONS]
    if not compressions:
        return None
    if len(compressions) == 1 and compressions[0] in _INFLATE_WBITS:
        return Inflater(compressions[0], url)
    raise SourceError(
        f"source host {netloc(url)} sent Content-Encoding {', '.join(compressions)!r}, "
        "which is not supported"
    )


class Inflater:
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
                f"source host {netloc(self._url)} sent a body that is not valid {self._coding}"
            ) from None


def netloc(url: httpx.URL) -> str:
    """Host and port for messages: never the path or query, which may carry secrets."""
    return url.netloc.decode("ascii", "replace")
