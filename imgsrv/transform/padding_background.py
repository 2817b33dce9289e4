"""Background colour, ``contain`` letterboxing and padding.

The background is what shows through transparency and fills added space. Without a
``background`` option it is transparent when the output format has alpha and white when it
does not (JPEG). With one, semi-transparent pixels are composited over it, so an opaque
background gives an opaque image in any format; for JPEG only its colour counts, since JPEG
has no alpha.
"""

from __future__ import annotations

from typing import Final

from imgsrv.spec import OutputFormat, TransformSpec
from imgsrv.transform.geometry import compass_offset, padding_pixels
from imgsrv.transform.negotiate_format import ALPHA_FORMATS
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.state import ImageState
from imgsrv.transform.vips import VImage, has_alpha

Colour = tuple[int, int, int, int]

WHITE: Final[Colour] = (255, 255, 255, 255)
TRANSPARENT: Final[Colour] = (0, 0, 0, 0)


def fill_colour(background: Colour | None, output_format: OutputFormat) -> Colour:
    """The colour of added space: the requested one, else transparent or white."""
    if background is not None:
        return background
    return TRANSPARENT if output_format in ALPHA_FORMATS else WHITE


def apply_background(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Resolve transparency the output cannot keep, or that a background option covers."""
    image = state.image
    if not has_alpha(image):
        return
    colour = spec.background
    if state.output_format not in ALPHA_FORMATS:
        red, green, blue, _ = colour or WHITE
        state.image = image.flatten(background=[red, green, blue])
    elif colour is not None:
        # A point operation, so the whole strip of an animation can go at once.
        underlay = image.new_from_image(list(colour)).copy(interpretation="srgb")
        state.image = underlay.composite2(image, "over").cast("uchar")


def extend_to_box(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Pad a ``contain``-scaled frame out to the requested box, placed by gravity."""
    plan = state.plan
    if plan is None or not plan.pads:
        return
    box_width, box_height = plan.box_width, plan.box_height
    if spec.rotate in (90, 270):
        box_width, box_height = box_height, box_width
    width, height = state.frame_width, state.frame_height
    left, top = compass_offset(spec.gravity, box_width - width, box_height - height)
    colour = fill_colour(spec.background, state.output_format)
    fmt = state.output_format
    state.map_frames(lambda frame: embed(frame, left, top, box_width, box_height, colour, fmt))


def pad(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Add ``spec.padding`` (CSS pixels, scaled by dpr) around every frame."""
    top, right, bottom, left = padding_pixels(*spec.padding, spec.dpr)
    if not (top or right or bottom or left):
        return
    width = state.frame_width + left + right
    height = state.frame_height + top + bottom
    colour = fill_colour(spec.background, state.output_format)
    fmt = state.output_format
    state.map_frames(lambda frame: embed(frame, left, top, width, height, colour, fmt))


def embed(
    frame: VImage,
    left: int,
    top: int,
    width: int,
    height: int,
    colour: Colour,
    output_format: OutputFormat,
) -> VImage:
    """Place ``frame`` at (left, top) in a ``width`` x ``height`` canvas of ``colour``."""
    if colour[3] < 255 and output_format in ALPHA_FORMATS and not has_alpha(frame):
        frame = frame.addalpha()
    fill = list(colour) if has_alpha(frame) else list(colour[:3])
    return frame.embed(left, top, width, height, extend="background", background=fill)
