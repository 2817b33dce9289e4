"""Choosing the output format: explicit, kept from the source, or negotiated from Accept."""

from __future__ import annotations

from typing import Final

from imgsrv.spec import OutputFormat, TransformSpec
from imgsrv.transform.header import SourceHeader

CONTENT_TYPES: Final[dict[OutputFormat, str]] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
}

ALPHA_FORMATS: Final[frozenset[OutputFormat]] = frozenset({"png", "webp", "avif", "gif"})
"""Output formats that can carry transparency."""

ANIMATION_FORMATS: Final[frozenset[OutputFormat]] = frozenset({"gif", "webp"})
"""Output formats that can carry an animation."""

_WRITABLE: Final[dict[str, OutputFormat]] = {
    "jpeg": "jpeg",
    "png": "png",
    "webp": "webp",
    "avif": "avif",
    "gif": "gif",
}


def resolve_auto_format(accepted: frozenset[str], alpha: bool, animated: bool) -> OutputFormat:
    """The best format a client accepts, for ``f:auto``.

    ``accepted`` holds the formats the Accept header allows beyond the universal
    jpeg/png/gif (a subset of {"avif", "webp"}). Stills: AVIF, else WebP, else PNG when the
    image has alpha, else JPEG. Animations: WebP, else GIF (AVIF sequences are not written).
    """
    if animated:
        return "webp" if "webp" in accepted else "gif"
    if "avif" in accepted:
        return "avif"
    if "webp" in accepted:
        return "webp"
    return "png" if alpha else "jpeg"


def choose_output_format(
    spec: TransformSpec, header: SourceHeader, accepted: frozenset[str]
) -> OutputFormat:
    """The format to encode: the spec's, the negotiated one for auto, or the source's own.

    With no format in the spec the source format is kept when imgsrv can write it; TIFF,
    SVG and HEIF sources become PNG when they have alpha and JPEG otherwise.
    """
    if spec.format == "auto":
        return resolve_auto_format(accepted, header.alpha, header.animated)
    if spec.format is not None:
        return spec.format
    kept = _WRITABLE.get(header.format)
    if kept is not None:
        return kept
    return "png" if header.alpha else "jpeg"


def keeps_animation(header: SourceHeader, output_format: OutputFormat) -> bool:
    """Whether the output is animated: an animated source written as GIF or WebP."""
    return header.animated and output_format in ANIMATION_FORMATS
