"""CacheEntry: encoded image bytes plus the response metadata, in one compact value."""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

import orjson

MAGIC = b"IMG1"
_HEADER = struct.Struct(">4sI")


class CorruptEntry(ValueError):
    """A stored value is not a CacheEntry (foreign key, truncated write, older layout)."""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What both tiers store: everything a response needs without libvips."""

    data: bytes
    content_type: str
    format: str
    width: int
    height: int
    pages: int
    etag: str

    def encode(self) -> bytes:
        """``MAGIC, len(meta), meta JSON, bytes``: one value, one round trip per hit."""
        meta = asdict(self)
        del meta["data"]
        head = orjson.dumps(meta)
        return _HEADER.pack(MAGIC, len(head)) + head + self.data

    @classmethod
    def decode(cls, raw: bytes) -> CacheEntry:
        if len(raw) < _HEADER.size:
            raise CorruptEntry("value too short")
        magic, size = _HEADER.unpack_from(raw)
        if magic != MAGIC or _HEADER.size + size > len(raw):
            raise CorruptEntry("not a cache entry")
        try:
            meta = orjson.loads(raw[_HEADER.size : _HEADER.size + size])
            return cls(data=raw[_HEADER.size + size :], **meta)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise CorruptEntry(str(exc)) from None
