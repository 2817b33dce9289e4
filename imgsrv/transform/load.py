"""Decoding the source: shrink-on-load when the spec allows it, else the full image.

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
from imgsrv.transform.header import SourceHeader
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.resize import make_plan
from imgsrv.transform.state import ImageState
from imgsrv.transform.vips import get_int

FAIL_ON: Final = "error"


def can_shrink_on_load(spec: TransformSpec) -> bool:
    """Whether the loader may scale while decoding.

    Crop rectangles are in full-resolution source pixels and trim detection compares exact
    border pixels, so both need the full image; every other step works on the scaled one.
    """
    return spec.crop is None and spec.trim is None


def decode(
    data: bytes,
    header: SourceHeader,
    spec: TransformSpec,
    output_format: OutputFormat,
    animated: bool,
    options: TransformOptions,
) -> ImageState:
    """Start decoding ``data`` (lazily: pixels flow when the output is encoded).

    With shrink-on-load, libvips' thumbnail decodes JPEG, WebP, HEIF and SVG directly at (or
    near) the target scale, applies the EXIF orientation, and converts embedded colour
    profiles to sRGB, so the returned state is already scaled, upright and sRGB.
    """
    frames = header.pages if animated else 1
    if can_shrink_on_load(spec):
        plan = make_plan(header.width, header.height, frames, spec, options)
        colour: dict[str, Any] = {}
        if header.icc_profile or header.cmyk:
            # Only then: the conversion costs time even when there is nothing to convert.
            colour["output_profile"] = "srgb"
        # thumbnail's own fail_on argument does not reach the loader; the loader options do.
        loader_options = f"fail_on={FAIL_ON}" + (",n=-1" if animated else "")
        image = pyvips.Image.thumbnail_buffer(
            data,
            plan.width,
            height=plan.height,
            size="force",
            option_string=loader_options,
            **colour,
        )
        state = ImageState(
            image=image,
            header=header,
            output_format=output_format,
            animated=animated,
            page_height=_page_height(image, animated),
            region=(0, 0, header.width, header.height),
            oriented=True,
            colour_managed=bool(colour),
            plan=plan,
        )
    else:
        load: dict[str, Any] = {"access": "sequential", "fail_on": FAIL_ON}
        if animated:
            load["n"] = -1
        image = pyvips.Image.new_from_buffer(data, "", **load)
        state = ImageState(
            image=image,
            header=header,
            output_format=output_format,
            animated=animated,
            page_height=_page_height(image, animated),
            region=(0, 0, header.width, header.height),
        )
    return state


def _page_height(image: Any, animated: bool) -> int:
    height = int(image.height)
    return get_int(image, "page-height", height) if animated else height
