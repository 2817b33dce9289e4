"""What the transform hands back: rendered bytes, or header metadata."""

from __future__ import annotations

from dataclasses import dataclass

from imgsrv.spec import OutputFormat


@dataclass(frozen=True, slots=True)
class Rendered:
    """An encoded image and the facts a response or cache entry needs about it.

    ``width``, ``height`` and ``pages`` describe what was encoded; ``height`` is that of one
    frame for animations.
    """

    data: bytes
    format: OutputFormat
    content_type: str
    width: int
    height: int
    pages: int


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """Header-only metadata of a source image.

    ``width``/``height`` are as displayed, i.e. with the EXIF orientation applied; ``format`` is
    the source format name (jpeg, png, gif, webp, avif, heif, tiff or svg).
    """

    width: int
    height: int
    format: str
    orientation: int
    alpha: bool
    pages: int
