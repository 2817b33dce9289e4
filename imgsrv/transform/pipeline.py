"""The transform pipeline: header checks, decode, an ordered list of steps, encode.

Each step is a function ``(state, spec, options) -> None`` that changes ``state.image`` (or
does nothing when the spec does not ask for it). The order matters:

1. orient first, so crop rectangles and focal points refer to the image as displayed;
2. colour to sRGB before anything that paints colours (backgrounds, padding);
3. crop and trim at full resolution, then resize (shrink-on-load does steps 1-2 and the
   scaling while decoding, whenever there is no crop or trim);
4. rotate/flip and filters on the scaled frame: cheap at output size;
5. background, then letterbox and padding, so added space is painted exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from imgsrv.spec import OutputFormat, TransformSpec
from imgsrv.transform.blur_sharpen import blur, sharpen
from imgsrv.transform.colour import to_srgb
from imgsrv.transform.crop import crop
from imgsrv.transform.header import check_decodable, check_source_limits, read_header
from imgsrv.transform.load import decode
from imgsrv.transform.negotiate_format import (
    choose_output_format,
    keeps_animation,
    resolve_auto_format,
)
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.orient import auto_orient
from imgsrv.transform.padding_background import apply_background, extend_to_box, pad
from imgsrv.transform.resize import resize
from imgsrv.transform.results import ImageInfo, Rendered
from imgsrv.transform.rotate_flip import rotate_flip
from imgsrv.transform.save import encode
from imgsrv.transform.state import ImageState
from imgsrv.transform.trim import trim
from imgsrv.transform.vips import vips_errors

Step = Callable[[ImageState, TransformSpec, TransformOptions], None]

STEPS: Final[tuple[Step, ...]] = (
    auto_orient,
    to_srgb,
    crop,
    trim,
    resize,
    rotate_flip,
    blur,
    sharpen,
    apply_background,
    extend_to_box,
    pad,
)


def transform(
    data: bytes, spec: TransformSpec, accepted: frozenset[str], options: TransformOptions
) -> Rendered:
    """Render ``data`` (an encoded source image) as ``spec`` asks.

    ``accepted`` is the set of optional formats ({"avif", "webp"} at most) the client takes;
    it only matters for ``f:auto``, which picks among those ``options.auto_formats`` allows.
    Blocking and CPU-bound: run it on a worker thread.

    Raises only imgsrv errors: :class:`UnsupportedFormat` (no loader, JPEG XL, HEVC, SVG
    when disabled), :class:`ImageTooLarge` (pixel or frame limits, checked before decoding),
    :class:`UndecodableImage` (corrupt or truncated data, or any other libvips failure) and
    :class:`InvalidOption` (a crop outside the image).
    """
    with vips_errors("cannot decode the image"):
        header = read_header(data, options)
        check_decodable(header)
        usable = accepted.intersection(options.auto_formats)
        output_format: OutputFormat = choose_output_format(spec, header, usable)
        animated = keeps_animation(header, output_format)
        check_source_limits(header, animated, options)
        state = decode(data, header, spec, output_format, animated, options)
        for step in STEPS:
            step(state, spec, options)
        return encode(state, spec, options)


def probe(data: bytes, options: TransformOptions) -> ImageInfo:
    """Header-only metadata of a source, for ``/info``; decodes no pixels.

    Size limits are not applied (nothing is decoded), and a HEVC HEIF, whose header is
    readable, is described even though it cannot be rendered. Raises
    :class:`UnsupportedFormat` or :class:`UndecodableImage` like :func:`transform`.
    """
    header = read_header(data, options)
    return ImageInfo(
        width=header.width,
        height=header.height,
        format=header.format,
        orientation=header.orientation,
        alpha=header.alpha,
        pages=header.pages,
    )


__all__ = ["STEPS", "probe", "resolve_auto_format", "transform"]
