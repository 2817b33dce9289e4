"""Decoding the source: shrink-on-load when the spec allows it, else the full image.

Shrink-on-load means decoding fewer pixels in the first place. JPEG decoders scale by 1/2,
1/4 or 1/8 inside the inverse DCT, WebP's decoder rescales while it decodes, SVG renders at
the target scale and HEIF files may carry an embedded thumbnail. The loader gets the frame
close to (never below) the planned size and the resize step finishes it exactly.

For JPEG the largest DCT scale that still yields at least the planned size is taken, as
imgproxy and thumbor (Pillow's draft mode) do. libvips' own ``thumbnail`` leaves a factor of
two for the final resampling, i.e. decodes four times the pixels: measured on a 1920x1280
photo to 300x200, that costs about 15% more CPU for a result 3.6 dB closer (47.7 against
44.1 dB PSNR) to a full decode resampled with Lanczos, a difference below what JPEG or WebP
at quality 80 preserve. ``jpeg_shrink_headroom`` restores libvips' rule.

``fail_on="error"``: libvips by default fills in whatever a damaged file lacks and only
warns, so a truncated JPEG, PNG or GIF renders as a half-grey picture. "error" makes any
decoder *error* fatal (truncation included) while tolerating *warnings* about damage the
decoder recovered from completely, such as stray bytes between JPEG markers or an invalid
trailing GIF frame; browsers display those files, so refusing them would be wrong.
("warning" refuses them; "truncated" would let other decoder errors through.)
"""

from __future__ import annotations

from typing import Any, Final

import pyvips

from imgsrv.spec import OutputFormat, TransformSpec
from imgsrv.transform.geometry import ResizePlan
from imgsrv.transform.header import SourceHeader
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.resize import make_plan
from imgsrv.transform.state import ImageState
from imgsrv.transform.vips import VImage, get_int, open_with

FAIL_ON: Final = "error"

JPEG_SCALES: Final = (8, 4, 2)
"""The scales a JPEG decoder can shrink by while decoding."""

# Formats whose best shrink-on-load libvips' thumbnail knows and we leave to it: an embedded
# HEIF thumbnail when it is big enough, SVG rendered straight at the target scale.
THUMBNAIL_FORMATS: Final = frozenset({"heif", "avif", "svg"})


def can_shrink_on_load(spec: TransformSpec) -> bool:
    """Whether the loader may scale while decoding.

    Crop rectangles are in full-resolution source pixels and trim detection compares exact
    border pixels, so both need the full image; every other step works on the scaled one.
    """
    return spec.crop is None and spec.trim is None


def jpeg_shrink(factor: float, headroom: bool = False) -> int:
    """The DCT scale-down for a frame that must shrink by ``factor`` overall.

    The largest of 8, 4 and 2 not above ``factor`` (1 when none is), so that the decoded frame
    is never smaller than the target; with ``headroom``, a factor of two is left for the final
    resampling, as libvips' thumbnail does.
    """
    needed = factor / 2 if headroom else factor
    return next((scale for scale in JPEG_SCALES if needed >= scale), 1)


def shrink_on_load(
    header: SourceHeader, plan: ResizePlan, options: TransformOptions
) -> dict[str, Any]:
    """The loader options that decode the source part of the way to ``plan``'s size:
    ``shrink`` for JPEG (a DCT scale), ``scale`` for WebP (straight to the size), none else."""
    factor = min(header.width / plan.width, header.height / plan.height)
    if header.format == "jpeg" and factor >= 2:
        return {"shrink": jpeg_shrink(factor, options.jpeg_shrink_headroom)}
    if header.format == "webp" and factor > 1:
        return {"scale": 1 / factor}
    return {}


def decode(
    data: bytes,
    header: SourceHeader,
    spec: TransformSpec,
    output_format: OutputFormat,
    animated: bool,
    options: TransformOptions,
) -> ImageState:
    """Start decoding ``data`` (lazily: pixels flow when the output is encoded)."""
    frames = header.pages if animated else 1
    if not can_shrink_on_load(spec):
        image = _load(data, header, animated)
        return _state(image, header, output_format, animated)
    plan = make_plan(header.width, header.height, frames, spec, options)
    if header.format in THUMBNAIL_FORMATS:
        return _thumbnail(data, header, output_format, animated, plan)
    image = _load(data, header, animated, **shrink_on_load(header, plan, options))
    state = _state(image, header, output_format, animated)
    state.planned = plan
    return state


def _load(data: bytes, header: SourceHeader, animated: bool, **options: Any) -> VImage:
    if animated:
        options["n"] = -1
    return open_with(header.loader, data, access="sequential", fail_on=FAIL_ON, **options)


def _state(
    image: VImage, header: SourceHeader, output_format: OutputFormat, animated: bool
) -> ImageState:
    return ImageState(
        image=image,
        header=header,
        output_format=output_format,
        animated=animated,
        page_height=_page_height(image, animated),
        region=(0, 0, header.width, header.height),
    )


def _thumbnail(
    data: bytes,
    header: SourceHeader,
    output_format: OutputFormat,
    animated: bool,
    plan: ResizePlan,
) -> ImageState:
    """libvips' thumbnail: scaled, upright and sRGB straight out of the loader."""
    colour: dict[str, Any] = {}
    if header.icc_profile or header.cmyk:
        # Only then: the conversion costs time even when there is nothing to convert.
        colour["output_profile"] = "srgb"
    # thumbnail's own fail_on argument does not reach the loader; the loader options do.
    loader_options = f"fail_on={FAIL_ON}" + (",n=-1" if animated else "")
    image = pyvips.Image.thumbnail_buffer(
        data, plan.width, height=plan.height, size="force", option_string=loader_options, **colour
    )
    state = _state(image, header, output_format, animated)
    state.oriented = True
    state.colour_managed = bool(colour)
    state.plan = plan
    return state


def _page_height(image: VImage, animated: bool) -> int:
    height = int(image.height)
    return get_int(image, "page-height", height) if animated else height
