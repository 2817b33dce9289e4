"""``f:auto``: which modern output formats a client's ``Accept`` header allows."""

from __future__ import annotations

from functools import lru_cache

MODERN_FORMATS = {"image/avif": "avif", "image/webp": "webp"}


@lru_cache(maxsize=256)
def accepted_formats(accept: str) -> frozenset[str]:
    """Formats beyond JPEG/PNG/GIF that ``accept`` names explicitly with a q-value above 0.

    Wildcards (``*/*``, ``image/*``) do not count: clients such as curl send ``*/*`` without
    being able to show AVIF, and browsers that can name the formats they support.
    """
    found: set[str] = set()
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        fmt = MODERN_FORMATS.get(media.lower())
        if fmt and _quality(params) > 0:
            found.add(fmt)
    return frozenset(found)


def _quality(params: list[str]) -> float:
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0
